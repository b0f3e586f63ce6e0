"""dakd compile: the pipeline as KFP IR YAML (default: the committed pipelines/dakd_pipeline.yaml)."""

from __future__ import annotations

NAME = "compile"
HELP = "compile the Kubeflow pipeline to IR YAML (images from DAKD_IMAGE / DAKD_CPU_IMAGE, or --images)"


def add_arguments(p) -> None:
    p.add_argument("--output", "-o", help="YAML path (default: pipelines/dakd_pipeline.yaml)")
    p.add_argument("--images", metavar="LOCK",
                   help="pin the images to the digests `docker/build.py --push` recorded in LOCK "
                        "(docker/images.lock.json): components use name@sha256:... instead of tags")


def run(args) -> int:
    from dakd_core.orchestration.kfp_client import compile_pipeline, default_yaml_path

    from dakd_core.cli._config_args import require_output_path
    from dakd_core.errors import ConfigError

    if args.output is not None:
        if not args.output.endswith((".yaml", ".yml")):
            raise ConfigError(f"--output {args.output!r}: the compiled pipeline is a .yaml file")
        require_output_path(args.output, "--output")
    images = None
    if args.images:
        from dakd_core.orchestration.images import pinned_environ

        images = pinned_environ(args.images)
    path = compile_pipeline(args.output or default_yaml_path(), images=images)
    print(path)
    return 0
