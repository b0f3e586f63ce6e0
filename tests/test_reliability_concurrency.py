"""Concurrency: two runs with different parameters on one store and one MLflow database never
overwrite each other's outputs, because every stage writes under `{store}/runs/{run_name}/`.

Shown at stage level: two `dakd pretrain` processes run at the same time with different lr, each
under its own run prefix, logging to the same sqlite MLflow database. Racing promotions on one
registered model are covered by tests/test_registry.py::test_concurrent_promotions_leave_the_serial_champion.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _distill_data import H, W, make_split
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.orchestration.tasks.common import run_prefix
from faults.kill import mlflow_env, zygote  # noqa: F401  (zygote is a fixture)


def test_two_concurrent_runs_keep_their_own_outputs_and_mlflow_runs(zygote, tmp_path, _mlflow_template_db):
    import mlflow

    store = (tmp_path / "store").as_uri()
    src = make_split(store, "src", "source", 4, seed=1)
    env = mlflow_env(tmp_path, "shared", _mlflow_template_db)  # ONE database for both runs
    runs = {"run-a": 0.01, "run-b": 0.002}
    pids = {}
    for name, lr in runs.items():
        out = f"{run_prefix(store, name)}/pretrain"
        argv = ["pretrain", "--model", "deeplabv2_tiny", "--source-manifest", src, "--out", out,
                "--crop", str(H), str(W), "--source-resize", str(H), str(W), "--batch-size", "2",
                "--num-workers", "0", "--iterations", "3", "--checkpoint-every", "1", "--log-every", "1",
                "--lr", str(lr), "--device", "cpu"]
        pids[name] = zygote.spawn(argv, tmp_path / f"{name}.log", env)
    for name, pid in pids.items():
        assert zygote.wait(pid) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    results = {}
    for name, lr in runs.items():
        out = Path(tmp_path / "store" / "runs" / name / "pretrain")
        result = json.loads((out / "result.json").read_text())
        assert result["last_checkpoint_uri"] == (out / "last.pt").as_uri()
        ckpt = load_checkpoint(result["last_checkpoint_uri"])
        assert ckpt["config"]["lr"] == lr and ckpt["step"] == 3
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{s:07d}.pt" for s in (1, 2, 3)]
        results[name] = (result, ckpt)
    a, b = results["run-a"][1]["model"], results["run-b"][1]["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different lr, different weights: nothing shared

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        client = mlflow.MlflowClient()
        found = client.search_runs([e.experiment_id for e in client.search_experiments()])
        by_checkpoint = {r.data.tags.get("dakd.last_checkpoint"): r for r in found}
        for name, lr in runs.items():
            run = by_checkpoint[results[name][0]["last_checkpoint_uri"]]
            assert run.info.status == "FINISHED"
            assert float(run.data.params["lr"]) == lr
            assert run.info.run_id == results[name][0]["mlflow_run_id"]
            assert len(client.get_metric_history(run.info.run_id, "train/seg_main")) == 3
    finally:
        mlflow.set_tracking_uri(None)
