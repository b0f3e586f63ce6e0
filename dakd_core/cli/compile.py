"""dakd compile: the pipeline as KFP IR YAML (default: the committed pipelines/dakd_pipeline.yaml)."""

from __future__ import annotations

NAME = "compile"
HELP = "compile the Kubeflow pipeline to IR YAML (images from DAKD_IMAGE / DAKD_CPU_IMAGE)"


def add_arguments(p) -> None:
    p.add_argument("--output", "-o", help="YAML path (default: pipelines/dakd_pipeline.yaml)")


def run(args) -> int:
    from dakd_core.orchestration.kfp_client import compile_pipeline, default_yaml_path

    path = compile_pipeline(args.output or default_yaml_path())
    print(path)
    return 0
