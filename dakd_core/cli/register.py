"""dakd register: log an exported student as a new registered-model version (alias challenger)."""

from __future__ import annotations

NAME = "register"
HELP = "register an exported student in the MLflow model registry and alias it 'challenger'"


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML file with RegisterConfig fields")
    p.add_argument("--export", help="export.json URI")
    p.add_argument("--metrics", help="metrics.json URI from `dakd evaluate`")
    p.add_argument("--metrics-model", help="model entry in metrics.json (when it has several)")
    p.add_argument("--source", help="source dataset (names the registered model)")
    p.add_argument("--target", help="target dataset")
    p.add_argument("--name", help="registered model name (default dakd-<source>-to-<target>)")
    p.add_argument("--paradigm")
    p.add_argument("--teacher")
    p.add_argument("--artifact", choices=("onnx_fp16", "onnx_fp32"))
    p.add_argument("--pipeline-run-id")
    p.add_argument("--git-commit")


def run(args) -> int:
    from dakd_core.config import build_config
    from dakd_core.registry import RegisterConfig, register

    cfg = build_config(
        RegisterConfig, args.config, export=args.export, metrics=args.metrics, metrics_model=args.metrics_model,
        source=args.source, target=args.target, name=args.name, paradigm=args.paradigm, teacher=args.teacher,
        artifact=args.artifact, pipeline_run_id=args.pipeline_run_id, git_commit=args.git_commit,
    )
    result = register(cfg)
    print(f"registered {result.name} version {result.version} (alias challenger, {result.model_uri}), "
          f"mIoU {result.metrics['miou']:.4f}")
    return 0
