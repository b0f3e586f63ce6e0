"""`dakd pretrain` under torchrun: 2 CPU processes, gloo, DistributedSampler shards, rank-0 writes."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.train.engine import Dist, ResumableShardSampler

from _train_data import make_split, tiny_fields


def test_shards_are_disjoint_and_resume_mid_epoch():
    size = 10
    shards = [ResumableShardSampler(size, seed=3, dist=Dist(r, 2, torch.device("cpu"))) for r in range(2)]
    first = [[next(iter_) for _ in range(5)] for iter_ in map(iter, shards)]
    assert {i for _, i in first[0]}.isdisjoint({i for _, i in first[1]})
    assert sorted(i for shard in first for _, i in shard) == list(range(size))
    # a sampler started 3 keys in continues exactly where an uninterrupted one is
    it = iter(ResumableShardSampler(size, seed=3, dist=Dist(0, 2, torch.device("cpu"))))
    reference = [next(it) for _ in range(12)]
    resumed = iter(ResumableShardSampler(size, seed=3, dist=Dist(0, 2, torch.device("cpu")), start=3))
    assert [next(resumed) for _ in range(9)] == reference[3:]
    assert [e for e, _ in reference] == [0] * 5 + [1] * 5 + [2] * 2  # epochs follow each other
    assert [i for _, i in reference[5:10]] != [i for _, i in reference[:5]]  # reshuffled per epoch


def test_torchrun_two_process_gloo_pretrain(tmp_path):
    store = (tmp_path / "store").as_uri()
    (tmp_path / "store").mkdir()
    source = make_split(store, "src", 4, "source", seed=0)
    out = tmp_path / "ddp"
    fields = tiny_fields(source_manifest=source, out=out.as_uri(), iterations=3, batch_size=1, checkpoint_every=3)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "dakd_core", "pretrain", "--device", "cpu"]
    for k, v in fields.items():
        argv += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list) else [v])]
    env = {**os.environ, "DAKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = load_checkpoint((out / "last.pt").as_uri())
    assert last["step"] == 3 and last["world_size"] == 2
    # both ranks' RNG states are kept (ranks are seeded seed + rank, so they differ)
    assert len(last["rng"]) == 2 and not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])
    # each rank consumed its own shard: 3 steps x batch 1
    assert last["data"]["source"]["consumed"] == 3
    # (dot-files: the writer lease of dakd_core/lease.py and its lock)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "best.pt", "checkpoints", "last.pt", "result.json"]
    # one MLflow stage run (rank 0 only)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        runs = mlflow.search_runs(search_all_experiments=True)
    finally:
        mlflow.set_tracking_uri(None)
    assert len(runs) == 1
