"""Run a training stage in the task's own process, or under torchrun with one process per GPU.

    result = run_stage("pretrain", cfg, gpus_per_task, pretrain.run)

`gpus_per_task` 1 calls `run(cfg)` here. N > 1 writes the validated config to a YAML file and starts

    python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node N -m dakd_core <stage> --config FILE

whose processes join one DDP group (dakd_core/train/engine.py: nccl, one GPU per LOCAL_RANK; gloo
on CPU). Rank 0 publishes `{out}/result.json`; the result is read back from it and must carry
this config's hash. The processes inherit the task's environment (tracking context, AWS_*), and
their output goes to the task's log.

Inside a Kubeflow Training Operator PyTorchJob (several pods, one per node) the operator sets
`PET_NNODES`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT`; torchrun reads these
itself, so the command then leaves out `--standalone --nnodes 1` (docs/cluster.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from dakd_core.errors import ConfigError, TrainingError

STAGES = ("pretrain", "adapt", "distill")  # `dakd <stage> --config FILE` runs each one
FIELD = "gpus_per_task"


def torchrun_command(stage: str, config_file: str, nproc: int, environ=None,
                     python: str = sys.executable) -> list[str]:
    """The torchrun command line running `dakd <stage> --config config_file` in `nproc` processes."""
    if stage not in STAGES:
        raise ConfigError(f"stage '{stage}' cannot run under torchrun (training stages: {', '.join(STAGES)})")
    if nproc < 1:
        raise ConfigError(f"{FIELD}: {nproc} must be >= 1")
    environ = os.environ if environ is None else environ
    # One node unless a PyTorchJob describes several (torchrun then reads PET_* itself).
    nodes = [] if "PET_NNODES" in environ else ["--standalone", "--nnodes", "1"]
    return [python, "-m", "torch.distributed.run", *nodes, "--nproc_per_node", str(nproc),
            "-m", "dakd_core", stage, "--config", config_file]


def _check_devices(cfg, nproc: int) -> None:
    """On CUDA each process takes one GPU: asking for more than the task sees is a config error."""
    import torch

    from dakd_core.train.engine import default_device, resolve_device

    device = resolve_device(cfg.device) if cfg.device else default_device()
    visible = torch.cuda.device_count() if device.type == "cuda" else None
    if visible is not None and nproc > visible:
        raise ConfigError(f"{FIELD}: {nproc} processes, but the task sees {visible} GPU(s) "
                          "(set the task's nvidia.com/gpu limit to the same number)")


def read_result(cfg, stage: str):
    """The TrainResult rank 0 published for exactly this config."""
    from dakd_core.storage import open_store
    from dakd_core.train.engine import RESULT, TrainResult, config_hash

    store = open_store(cfg.out)
    if not store.exists(RESULT):
        raise TrainingError(f"{stage} under torchrun finished without {store.url(RESULT)}")
    document = json.loads(store.get_bytes(RESULT))
    if document.get("config_hash") != config_hash(cfg):
        raise TrainingError(f"{store.url(RESULT)} belongs to another config (hash {document.get('config_hash')})")
    return TrainResult(document["best_checkpoint_uri"], document["last_checkpoint_uri"],
                       document.get("metrics", {}), document.get("mlflow_run_id"))


def config_yaml(cfg) -> str:
    """The config as YAML that rebuilds it: only the fields that were set (method-specific
    fields of other methods are refused when set, and recipe fields are derived again)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=True)


def run_stage(stage: str, cfg, gpus_per_task: int, run: Callable):
    """`run(cfg)` in this process when `gpus_per_task` is 1, else under torchrun (see module doc)."""
    if gpus_per_task == 1:
        return run(cfg)
    _check_devices(cfg, gpus_per_task)
    with tempfile.TemporaryDirectory(prefix=f"dakd-{stage}-") as tmp:
        config_file = Path(tmp) / f"{stage}.yaml"
        config_file.write_text(config_yaml(cfg))
        command = torchrun_command(stage, str(config_file), gpus_per_task)
        print("dakd: " + " ".join(command), flush=True)
        code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise TrainingError(f"{stage} under torchrun ({gpus_per_task} processes) exited with code {code}; "
                            "the processes' errors are in the log above")
    return read_result(cfg, stage)
