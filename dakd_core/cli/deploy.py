"""dakd deploy: a Triton model repository (config.pbtxt + model) from a registered student."""

from __future__ import annotations

NAME = "deploy"
HELP = "write a Triton model repository from a registry version (NAME@champion) or an exported .onnx"


def add_arguments(p) -> None:
    from dakd_core.cli._config_args import add_config_arguments
    from dakd_core.deploy import DeployConfig

    add_config_arguments(p, DeployConfig)
    # `dakd export`'s spelling of --no-log-mlflow
    p.add_argument("--no-mlflow", dest="log_mlflow", action="store_const", const=False,
                   help="same as --no-log-mlflow")


def run(args) -> int:
    from dakd_core.cli._config_args import config_from_args
    from dakd_core.deploy import DeployConfig, deploy

    from dakd_core.train.engine import open_output

    cfg = config_from_args(DeployConfig, args)
    open_output(cfg.out, "out")  # a bad --out is refused before any input is read
    result = deploy(cfg)
    print(f"deployed {result.source} -> {result.model_dir}")
    print(f"  platform {result.platform}, max_batch_size {result.max_batch_size}, dynamic batching")
    for kind, specs in (("input", result.inputs), ("output", result.outputs)):
        for s in specs:
            print(f"  {kind:6s} {s.name}: {s.data_type} [-1, {', '.join(map(str, s.dims))}]")
    for path in sorted(p for p in result.model_dir.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(result.model_dir.parent)}  {path.stat().st_size} bytes")
    print(f"  model sha256 {result.sha256}")
    if result.registry:
        r = result.registry
        print(f"  logged to {r['triton_uri']}/{result.model_name} (version {r['version']} tagged dakd.deploy.triton_uri)")
    return 0
