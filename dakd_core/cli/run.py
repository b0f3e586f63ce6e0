"""dakd run: the whole pipeline on this machine (kfp.local), printing the final table."""

from __future__ import annotations

NAME = "run"
HELP = "run the whole pipeline locally on the built-in synthetic pair and print the results table"


def add_arguments(p) -> None:
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="RunConfig YAML: `params` (pipeline parameters) and `local` (default: configs/demo.yaml)")
    p.add_argument("--out", help="output directory (default: the config's local.out_dir, demo_out)")
    p.add_argument("--run-name", help="run name (default: local-<timestamp>)")
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

    config = args.config or _default_config()
    cfg = load_run_config(config, out_dir=args.out)
    print(f"dakd run: config {config or '(built-in defaults)'}, output in {cfg.local.out_dir}", flush=True)
    docker = None
    if args.runner == "docker":
        from dakd_core.orchestration.docker_runner import DockerTasks

        docker = DockerTasks()
        docker.check_images()
        print(f"dakd run: every task in a container: {', '.join(sorted(set(docker.images.values())))}", flush=True)
    result = run_local(cfg, run_name=args.run_name, store_uri=args.store, docker=docker)
    print(format_summary(result))
    return 0
