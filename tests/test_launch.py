"""gpus_per_task: a training stage in-process (1) or under torchrun (N processes, gloo on CPU)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from dakd_core.config import build_config
from dakd_core.errors import ConfigError, TrainingError
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.orchestration import launch
from dakd_core.train import pretrain
from dakd_core.train.configs import PretrainConfig

from _train_data import make_split, tiny_fields


def test_torchrun_command_single_node_and_pytorchjob():
    single = launch.torchrun_command("pretrain", "/tmp/p.yaml", 4, environ={})
    assert single == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                      "--nproc_per_node", "4", "-m", "dakd_core", "pretrain", "--config", "/tmp/p.yaml"]
    # In a PyTorchJob pod torchrun takes nodes, rank and master from the operator's PET_* variables.
    job = launch.torchrun_command("distill", "/c.yaml", 8, environ={"PET_NNODES": "2", "PET_NODE_RANK": "1"})
    assert job == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "8",
                   "-m", "dakd_core", "distill", "--config", "/c.yaml"]
    with pytest.raises(ConfigError, match="stage 'evaluate' cannot run under torchrun"):
        launch.torchrun_command("evaluate", "/c.yaml", 2)
    with pytest.raises(ConfigError, match="gpus_per_task: 0 must be >= 1"):
        launch.torchrun_command("pretrain", "/c.yaml", 0)


def test_more_processes_than_visible_gpus_is_a_config_error(monkeypatch):
    cfg = build_config(PretrainConfig, **tiny_fields(source_manifest="m", out="o", device="cpu"))
    launch._check_devices(cfg, 3)  # CPU processes: any number
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = cfg.model_copy(update={"device": "cuda"})
    launch._check_devices(cuda, 2)
    with pytest.raises(ConfigError, match=r"gpus_per_task: 3 processes, but the task sees 2 GPU\(s\)"):
        launch._check_devices(cuda, 3)


def test_one_gpu_runs_in_process():
    calls = []
    assert launch.run_stage("pretrain", "cfg", 1, lambda cfg: calls.append(cfg) or "result") == "result"
    assert calls == ["cfg"]


def test_two_processes_under_torchrun_gloo(tmp_path, monkeypatch):
    store = (tmp_path / "store").as_uri()
    (tmp_path / "store").mkdir()
    source = make_split(store, "src", 4, "source", seed=0)
    out = tmp_path / "pre"
    cfg = build_config(PretrainConfig, **tiny_fields(source_manifest=source, out=out.as_uri(), iterations=2,
                                                     batch_size=1, device="cpu"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = launch.run_stage("pretrain", cfg, 2, pretrain.run)
    assert result.best_checkpoint_uri == f"{out.as_uri()}/best.pt" and result.metrics["steps"] == 2
    last = load_checkpoint((out / "last.pt").as_uri())
    assert last["world_size"] == 2 and last["step"] == 2
    # the result must be this config's: a changed config does not take an old result.json
    with pytest.raises(TrainingError, match="belongs to another config"):
        launch.read_result(cfg.model_copy(update={"lr": 0.5}), "pretrain")
    assert json.loads((out / "result.json").read_text())["stage"] == "pretrain"


@pytest.mark.parametrize("cls, fields", [
    (PretrainConfig, {}),
    ("adapt", {"method": "road", "init": "i.pt", "target_manifest": "t", "road_grid": [2, 2],
               "road_reference": "init"}),
    ("distill", {"init": "i.pt", "target_manifest": "t", "teacher_cache": "c", "paradigm": "c"}),
])
def test_config_file_written_for_torchrun_rebuilds_the_same_config(tmp_path, cls, fields):
    """The processes rebuild the config from its YAML dump: it must be the same config (hash)."""
    from dakd_core.train.configs import AdaptConfig
    from dakd_core.train.distill_config import DistillConfig
    from dakd_core.train.engine import config_hash

    cls = {"adapt": AdaptConfig, "distill": DistillConfig}.get(cls, cls)
    cfg = build_config(cls, **tiny_fields(source_manifest="m", out="o", **fields))
    path = tmp_path / "c.yaml"
    path.write_text(launch.config_yaml(cfg))
    again = build_config(cls, str(path))
    assert again == cfg and config_hash(again) == config_hash(cfg)


class _Launched(Exception):
    """Raised by the stand-in run_stage below: the task got as far as launching its stage."""


def test_training_tasks_launch_their_stage_with_the_plans_gpus_per_task(tmp_path, monkeypatch):
    """The pipeline's training tasks hand the stage to run_stage with the process count the plan
    holds (PipelineParams.train_gpus_per_task), and build the stage config without that field."""
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan
    from dakd_core.orchestration.tasks.adapt import adapt_task
    from dakd_core.orchestration.tasks.distill import distill_task
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    launched = []

    def run_stage(stage, cfg, gpus_per_task, run):
        launched.append((stage, type(cfg).__name__, gpus_per_task, run.__module__))
        raise _Launched

    monkeypatch.setattr(launch, "run_stage", run_stage)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # every task has it
    plan = {k: json.dumps(v) for k, v in build_plan(PipelineParams(train_gpus_per_task=3)).items()}
    common = dict(store_uri=tmp_path.as_uri(), experiment="dakd-test")
    data = dict(source_manifest="file:///m/src.parquet")
    adversarial = dict(data, target_manifest="file:///m/tgt.parquet", init="file:///c/init.pt")
    calls = [lambda: pretrain_task(**common, role="teacher", config=plan["pretrain_teacher"], **data),
             lambda: adapt_task(**common, role="student", config=plan["adapt_student"], **adversarial),
             lambda: distill_task(**common, config=plan["distill_second"], teacher="file:///c/t.pt",
                                  cache_index="file:///c/index.parquet", **adversarial)]
    for call in calls:
        with pytest.raises(_Launched):
            call()
    assert launched == [("pretrain", "PretrainConfig", 3, "dakd_core.train.pretrain"),
                        ("adapt", "AdaptConfig", 3, "dakd_core.train.adapt"),
                        ("distill", "DistillConfig", 3, "dakd_core.train.distill")]
