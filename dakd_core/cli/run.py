"""dakd run: the whole pipeline on this machine (kfp.local), printing the final table."""

from __future__ import annotations

NAME = "run"
HELP = "run the whole pipeline locally on the built-in synthetic pair and print the results table"


def add_arguments(p) -> None:
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="RunConfig YAML: `params` (pipeline parameters) and `local` (default: configs/demo.yaml)")
    p.add_argument("--out", help="output directory (default: the config's local.out_dir, demo_out)")
    p.add_argument("--run-name", help="run name (default: local-<timestamp>)")
    p.add_argument("--no-reuse", action="store_true",
                   help="run every task, even one whose settings, inputs and code match an earlier run's "
                        "(default: such a task returns that run's recorded outputs, as KFP's cache would)")
    p.add_argument("--sweep", metavar="FILE.yaml",
                   help="one run per point of the file's `grid:` / `points:` of parameter overrides over its `base:` "
                        "(or --config), every point planned first; then one comparison table (orchestration/sweep.py)")
    p.add_argument("--store", metavar="URI", help="object store of the run, e.g. s3://bucket/prefix with AWS_* in the "
                                                  "environment (default: <out>/store)")
    p.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                   help="subprocess: every task a process of this virtualenv; docker: every task in its image "
                        "(DAKD_CPU_IMAGE/DAKD_IMAGE, default: this version's CPU image; README: Containers)")


def _default_config():
    from pathlib import Path

    for candidate in (Path("configs/demo.yaml"), Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"):
        if candidate.is_file():
            return str(candidate)
    return None  # the built-in defaults (full-size budgets: slow on a laptop)


def run(args) -> int:
    from dakd_core.orchestration.local import format_summary, run_local
    from dakd_core.orchestration.params import load_run_config

    from dakd_core.cli._config_args import require_output_path

    if args.out is not None:
        require_output_path(args.out, "--out")
    config = args.config or _default_config()
    if args.sweep:
        from datetime import datetime

        from dakd_core.orchestration.sweep import run_sweep

        name = args.run_name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
        print(run_sweep(args.sweep, config, args.out, name, reuse=not args.no_reuse))
        return 0
    cfg = load_run_config(config, out_dir=args.out)
    print(f"dakd run: config {config or '(built-in defaults)'}, output in {cfg.local.out_dir}", flush=True)
    docker = None
    if args.runner == "docker":
        from dakd_core.orchestration.docker_runner import DockerTasks

        docker = DockerTasks()
        docker.check_images()
        print(f"dakd run: every task in a container: {', '.join(sorted(set(docker.images.values())))}", flush=True)
    result = run_local(cfg, run_name=args.run_name, reuse=not args.no_reuse, store_uri=args.store,
                       docker=docker)
    print(format_summary(result))
    return 0
