"""Compile the pipeline to IR YAML and submit it to a Kubeflow Pipelines API server.

kfp is imported inside the functions: the CLI imports this module lazily and `dakd_core` never
depends on kfp at import time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dakd_core.errors import ConfigError, DakdError
from dakd_core.orchestration.params import PipelineParams

def default_yaml_path() -> Path:
    """pipelines/dakd_pipeline.yaml next to the pipeline module (the committed IR)."""
    import pipelines

    return Path(next(iter(pipelines.__path__))) / "dakd_pipeline.yaml"


def compile_pipeline(output: str | os.PathLike, images: dict[str, str] | None = None) -> Path:
    """`images`: DAKD_IMAGE / DAKD_CPU_IMAGE values to compile with (e.g. pinned digests)."""
    from kfp import compiler

    from dakd_core.orchestration.images import component_images

    if images:
        # The components read the images when first imported: set them before, and refuse to
        # compile with other images than asked for if that already happened in this process.
        os.environ.update(images)
        from components import _base

        if (_base.IMAGE, _base.CPU_IMAGE) != component_images(images):
            raise RuntimeError(f"components were imported with images {_base.IMAGE}, {_base.CPU_IMAGE} "
                               "before the images to compile with were chosen")
    from pipelines.dakd_pipeline import dakd_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(dakd_pipeline, str(output))
    return output


# The Kubernetes service account pipeline pods run as: k8s/runner/rbac.yaml creates it (with its
# role) in the namespace the pods run in; tests/test_k8s.py checks the two names agree.
DEFAULT_SERVICE_ACCOUNT = "dakd-runner"
PIPELINE_NAME = "dakd"
# The pipeline's own description, uploaded once with the pipeline and never updated by later
# versions: so it names what the pipeline is and where the guide is, and each version carries its
# own parameter guide (the form's parameters change between versions; one guide per panel).
PIPELINE_DESCRIPTION = ("dakd: a compact segmentation student adapted to an unlabelled target domain and distilled "
                        "from a domain-adapted teacher. Every version's description below is the parameter guide of "
                        "that version's run form: what each parameter means, its default and its choices.")


def submit_params(config_file: str | None) -> dict:
    """The run's arguments from the file `dakd run --config` reads: the keys its `params` section
    sets (the uploaded version holds the defaults), validated, as the form takes them (a
    number-or-word parameter as its text); `local` is for `dakd run` only."""
    if config_file is None:
        return {}
    from dakd_core.orchestration.params import PipelineParams, form_values, load_run_config

    data = _load_yaml(config_file)
    stray = sorted(set(data) & set(PipelineParams.model_fields))
    if stray:
        raise ConfigError(f"{config_file}: pipeline parameters go under `params:` (the file `dakd run --config` "
                          f"reads), found at the top level: {', '.join(stray)}")
    full = form_values(load_run_config(config_file).params)  # unknown keys / bad values: ConfigError
    return {k: full[k] for k in data.get("params") or {}}


def sweep_params(sweep_file: str, config_file: str | None) -> list[tuple[dict, dict]]:
    """Each point of a sweep file (orchestration/sweep.py) with its run's arguments: the keys its
    base config's `params` sets and the point's, as the form takes them (the other parameters keep
    the version's defaults). Every point is planned first: a bad one is a ConfigError naming it and
    the field before anything is submitted."""
    from dakd_core.orchestration.params import form_values, load_run_config
    from dakd_core.orchestration.sweep import plan_points, read_sweep

    base_path, points = read_sweep(sweep_file, config_file)
    base = submit_params(base_path)
    runs = []
    for point, cfg in zip(points, plan_points(load_run_config(base_path), points)):
        values = form_values(cfg.params)  # once per point, not once per key
        runs.append((point, {k: values[k] for k in dict.fromkeys([*base, *point])}))
    return runs


def _load_yaml(path: str) -> dict:
    # the one YAML reader: duplicate keys, binary files and directories are ConfigErrors naming the file
    from dakd_core.config import load_yaml

    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (`params:` and `local:`)")
    return data


def git_commit() -> str:
    """The checkout's 12-character HEAD commit, `-dirty` with uncommitted tracked changes;
    "nogit" outside a git checkout (an installed package)."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def version_name(package: str | os.PathLike) -> str:
    """`<package version>-<git commit>-<sha256[:8] of the compiled YAML>`: the commit says which
    code, the hash tells apart specs compiled from it with other images (DAKD_IMAGE)."""
    import hashlib

    from dakd_core import __version__

    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    return f"{__version__}-{git_commit()}-{digest}"


def package_description(package: str | os.PathLike) -> str:
    """The compiled pipeline's description (pipelineInfo.description): the parameter guide of the
    code that compiled it (dakd_core.orchestration.params.form_guide)."""
    import yaml

    with open(package) as f:
        spec = next(yaml.safe_load_all(f))
    return spec["pipelineInfo"].get("description", "")


def _find_version(client, pipeline_id: str, name: str) -> str | None:
    import json

    query = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipeline_versions(pipeline_id, page_size=2, filter=query).pipeline_versions or []
    return found[0].pipeline_version_id if found else None


def submit(host: str, runs: list[tuple[str, dict]], experiment: str, namespace: str | None = None,
           service_account: str = DEFAULT_SERVICE_ACCOUNT, package: str | None = None) -> dict:
    """Upload pipeline `dakd` (once) and this code's version (once per `version_name`), then start
    one run of that version per (run name, arguments) of `runs`, in `experiment`, as
    `service_account`: the runs of a sweep share their stages through KFP's cache. `package`: an
    already compiled YAML (default: compile now). A bearer token, if the server needs one, comes
    from KFP_TOKEN."""
    import kfp

    with tempfile.TemporaryDirectory() as tmp:
        if package is None:
            package = str(compile_pipeline(Path(tmp) / "dakd_pipeline.yaml"))
        elif not Path(package).is_file():
            raise ConfigError(f"--package: {package} does not exist")
        version = version_name(package)
        try:
            client = kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN") or None)
            # the parameter guide: the UI shows a pipeline's and a version's description, not the parameters'
            guide = package_description(package)
            pipeline_id = client.get_pipeline_id(PIPELINE_NAME) or client.upload_pipeline(
                package, PIPELINE_NAME, description=PIPELINE_DESCRIPTION, namespace=namespace).pipeline_id
            version_id = _find_version(client, pipeline_id, version) or client.upload_pipeline_version(
                package, version, pipeline_id=pipeline_id, description=guide).pipeline_version_id
            experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
            run_ids = [client.run_pipeline(experiment_id, name, params=params, pipeline_id=pipeline_id,
                                           version_id=version_id, service_account=service_account).run_id
                       for name, params in runs]
        except Exception as e:  # connection refused, 4xx/5xx: name the server, not the token
            raise DakdError(f"submitting to {host} failed: {type(e).__name__}: {str(e)[:500]}") from None
    return {"runs": [{"name": name, "run_id": run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run_id}"}
                     for (name, _), run_id in zip(runs, run_ids)],
            "pipeline_id": pipeline_id, "version_id": version_id, "version": version}
