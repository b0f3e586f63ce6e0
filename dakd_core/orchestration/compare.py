"""`dakd compare`: one table of the pipeline's MLflow parent runs (issue 32 item 4).

A row per parent run (tag `dakd.pipeline_parent`): its run name, dataset pair, paradigm, the
parameters whose values differ among the runs shown (what a sweep varied), each model's target
mIoU (the parent run's `miou.<row>` metrics, logged by register), the distillation gain and the
registry outcome (the `dakd.promotion` / `dakd.registered_version` tags, set by promote). The
same table and a bar plot of the distilled student's mIoU go to MLflow as a run `compare` of the
experiment (artifacts compare.md and compare.png), unless `log=False`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from dakd_core.errors import ConfigError

# The parent run's metrics (tasks/evaluate.py headline_metrics), as columns, in the results
# table's order (local.TABLE_ROWS).
MIOU_COLUMNS = (("teacher_source_only", "T src"), ("teacher_adapted", "T DA"), ("student_source_only", "S src"),
                ("student_adapted", "S DA"), ("student_distilled", "S dist"),
                ("student_distilled_onnx_fp16", "S ONNX"))
GAIN_METRIC = "gain.distilled_vs_adapted_student"
# Parameters never shown as "what differs": where the run wrote, not what it computed.
_NOT_SETTINGS = ("data_store_uri", "data_source_uri", "data_target_uri")


def parent_runs(experiment: str, run_names: list[str] | None = None) -> list:
    """The experiment's pipeline parent runs, oldest first; only `run_names` when given (in that
    order; a name without a parent run is an error naming it)."""
    from dakd_core.orchestration.parent_run import PARENT_TAG, _client

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"--experiment: no MLflow experiment {experiment!r} at this tracking URI")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'true'",
                              order_by=["attributes.start_time ASC"], max_results=10_000)
    if run_names is None:
        return runs
    by_name = {r.data.tags.get("dakd.run_name"): r for r in runs}  # the newest of a repeated name
    missing = [name for name in run_names if name not in by_name]
    if missing:
        raise ConfigError(f"no pipeline parent run named {', '.join(missing)} in experiment {experiment!r}")
    return [by_name[name] for name in run_names]


def differing_params(runs: list) -> list[str]:
    """The parameters whose values differ among `runs` (a sweep's swept ones), sorted."""
    keys = sorted({k for r in runs for k in r.data.params} - set(_NOT_SETTINGS))
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def comparison(runs: list) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison table."""
    swept = differing_params(runs)
    header = ["run", "pair", "paradigm", *swept, *(label for _, label in MIOU_COLUMNS), "gain", "registry"]
    rows = []
    for r in runs:
        m, tags = r.data.metrics, r.data.tags
        miou = [f"{100 * m['miou.' + key]:.2f}" if "miou." + key in m else "-" for key, _ in MIOU_COLUMNS]
        gain = f"{100 * m[GAIN_METRIC]:+.2f}" if GAIN_METRIC in m else "-"
        registry = f"{tags['dakd.registered_version']} {tags['dakd.promotion']}" \
            if "dakd.promotion" in tags else r.info.status.lower()
        rows.append([tags.get("dakd.run_name", r.info.run_name), tags.get("dakd.dataset_pair", "-"),
                     tags.get("dakd.paradigm", "-"), *(r.data.params.get(k, "-") for k in swept), *miou, gain,
                     registry])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def plot(header: list[str], rows: list[list[str]]) -> bytes:
    """PNG: the distilled student's and the adapted student's mIoU per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row[0] for row in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows)), 3.2))
    for offset, (label, colour) in zip((-0.2, 0.2), (("S DA", "#999999"), ("S dist", "#1f77b4"))):
        column = header.index(label)
        values = [float(row[column]) if row[column] != "-" else 0.0 for row in rows]
        ax.bar([i + offset for i in range(len(rows))], values, width=0.4, label=label, color=colour)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set_ylabel("target val mIoU %")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def log_comparison(experiment: str, table: str, png: bytes, runs: list) -> str:
    """An MLflow run `compare` in the experiment with the table and the plot; returns its id."""
    from dakd_core.orchestration.parent_run import _client

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name="compare",
                            tags={"dakd.compare_runs": ",".join(r.info.run_id for r in runs)})
    client.log_text(run.info.run_id, table + "\n", "compare.md")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "compare.png"
        path.write_bytes(png)
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def compare(experiment: str, run_names: list[str] | None = None, log: bool = True) -> tuple[str, str | None]:
    """The comparison table (markdown) of the experiment's parent runs and the id of the MLflow
    run it was logged to (None: not logged)."""
    runs = parent_runs(experiment, run_names)
    if not runs:
        raise ConfigError(f"experiment {experiment!r} has no pipeline parent run to compare")
    header, rows = comparison(runs)
    table = markdown(header, rows)
    return table, log_comparison(experiment, table, plot(header, rows), runs) if log else None
