"""Compile the pipeline to IR YAML and submit it to a Kubeflow Pipelines API server.

kfp is imported inside the functions: the CLI imports this module lazily and `dakd_core` never
depends on kfp at import time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dakd_core.errors import DakdError
from dakd_core.orchestration.params import PipelineParams

# Environment that selects images at compile time (components/_base.py).
IMAGE_ENV = ("DAKD_IMAGE", "DAKD_CPU_IMAGE")


def default_yaml_path() -> Path:
    """pipelines/dakd_pipeline.yaml next to the pipeline module (the committed IR)."""
    import pipelines

    return Path(next(iter(pipelines.__path__))) / "dakd_pipeline.yaml"


def compile_pipeline(output: str | os.PathLike) -> Path:
    from kfp import compiler

    from pipelines.dakd_pipeline import dakd_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(dakd_pipeline, str(output))
    return output


def submit_params(params_file: str | None) -> dict:
    """The run's arguments: only the keys the file sets (the IR holds the defaults), validated.
    The file is read by config.load_yaml, the one YAML reader (duplicate keys, binary files and
    directories are ConfigErrors naming the file), through build_config."""
    if params_file is None:
        return {}
    from dakd_core.config import build_config, load_yaml

    full = build_config(PipelineParams, params_file)  # unknown keys / bad values / not a mapping: ConfigError
    return {k: getattr(full, k) for k in load_yaml(params_file) or {}}


def submit(host: str, params: dict, experiment: str, run_name: str | None = None,
           namespace: str | None = None) -> dict:
    """Compile, then create a run. A bearer token, if the server needs one, comes from KFP_TOKEN."""
    import kfp

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "dakd_pipeline.yaml")
        try:
            client = kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN") or None)
            result = client.create_run_from_pipeline_package(
                str(package), arguments=params, run_name=run_name, experiment_name=experiment,
                namespace=namespace,
            )
        except Exception as e:  # connection refused, 4xx/5xx: name the server, not the token
            raise DakdError(f"submitting to {host} failed: {type(e).__name__}: {str(e)[:500]}") from None
    return {"run_id": result.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}
