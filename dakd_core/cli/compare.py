"""dakd compare: one table of the pipeline's MLflow parent runs (dakd_core/orchestration/compare.py)."""

from __future__ import annotations

NAME = "compare"
HELP = ("one table of the pipeline runs of an MLflow experiment: pair, paradigm, the parameters that differ, each "
        "model's target mIoU, the registry outcome; also logged to MLflow as a run `compare` with a plot")


def add_arguments(p) -> None:
    p.add_argument("--experiment", required=True, help="the MLflow experiment (the runs' mlflow_experiment)")
    p.add_argument("--run-name", action="append", dest="run_names", metavar="NAME",
                   help="only this run (repeatable; default: every pipeline run of the experiment)")
    p.add_argument("--out", help="a `dakd run` output folder: compare the runs in its MLflow database "
                                 "(default: MLFLOW_TRACKING_URI)")
    p.add_argument("--no-mlflow", action="store_true", help="print the table only, log nothing")


def run(args) -> int:
    import os
    from pathlib import Path

    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.compare import compare
    from dakd_core.orchestration.context import environ

    if args.out:  # that folder's database, whatever MLFLOW_TRACKING_URI says
        database = Path(args.out).resolve() / "mlflow.db"
        if not database.is_file():
            raise ConfigError(f"--out: {args.out} holds no mlflow.db (not a `dakd run` output folder)")
        uri = f"sqlite:///{database}"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        raise ConfigError("set --out (a `dakd run` output folder) or MLFLOW_TRACKING_URI")
    with environ({"MLFLOW_TRACKING_URI": uri}):
        table, logged = compare(args.experiment, args.run_names, log=not args.no_mlflow)
    print(table)
    if logged:
        print(f"logged to MLflow run {logged} (compare.md, compare.png)")
    return 0
