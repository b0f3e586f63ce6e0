"""Concurrency: runs never overwrite each other's outputs.

- Two `dakd pretrain` runs with different parameters, each under its own run prefix, logging to
  one sqlite MLflow database: each keeps its own outputs and MLflow run.
- Randomised races on ONE output (writer leases, dakd_core/lease.py): six lease-protocol writers
  with random delays (one frozen by SIGSTOP past its lease on file://), on file:// and S3; and
  three real `dakd pretrain` runs into one --out. The published result always belongs to the run
  that published it.

Racing promotions on one registered model are covered by
tests/test_registry.py::test_concurrent_promotions_leave_the_serial_champion.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _distill_data import H, W, make_split
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.lease import lease_key
from dakd_core.orchestration.tasks.common import run_prefix
from dakd_core.storage import open_store
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


# --------------------------------------------------------------------- writer leases, randomised

WRITER = Path(__file__).resolve().parent / "faults" / "lease_writer.py"
# Lease ttl in seconds; every writer's 3 steps take < 1.5 ttl, its start delay < 2 ttl. A holder's
# renewal (every ttl/3) may come up to 5/12 ttl late before `publishing` refuses (< ttl/4 left):
# with ttl 1 s on a loaded machine (load average 11 on 2 cores) renewals fell that far behind and,
# correctly, no writer published (2 of 14 runs); 3 s leaves 1.25 s.
TTL = 3.0


def _start_writer(store_uri: str, run: str, seed: int, delay: float | None = None) -> subprocess.Popen:
    argv = [sys.executable, str(WRITER), store_uri, run, str(seed), str(TTL)] + ([str(delay)] if delay is not None else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _holder(store) -> dict | None:
    current = store.read_versioned(lease_key("writer"))
    return json.loads(current[0]) if current else None


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _pause_first_holder_until_taken_over(store, store_uri: str, names: dict[int, str]) -> tuple[str, subprocess.Popen]:
    """SIGSTOP the first writer seen holding the lease (a paused process: no renewals), start a
    late writer once the lease has expired, SIGCONT the paused one once another writer took over.
    Returns (the paused run, the late writer)."""
    assert _wait_for(lambda: (_holder(store) or {}).get("pid") in names, 30), "no writer took the lease"
    pid = _holder(store)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.2 * TTL)  # its lease expires meanwhile
        late = _start_writer(store_uri, "late", 0, delay=0.0)  # someone tries after the expiry
        # (if the frozen writer holds the lease's lock, the takeover waits for SIGCONT)
        _wait_for(lambda: (_holder(store) or {}).get("pid") != pid, 20)
    finally:
        os.kill(pid, signal.SIGCONT)
    return names[pid], late


@pytest.mark.parametrize("backend,seed,pause", [("file", 1, True), ("file", 2, True), ("s3", 3, False)])
def test_racing_writers_each_publish_only_their_own_result(backend, seed, pause, tmp_path, request):
    """Six writers with random start and step delays race for one output (plus, with pause, a
    holder frozen past its lease, whose expired lease another writer takes over). Whatever the
    interleaving: holders never overlap, refused writers name the holder, the frozen one publishes
    nothing after losing its lease, and the published result.json, `last` and every checkpoint
    belong to the one run that published it. (S3 runs without the freeze: there a freeze between
    the lease check and the end of the put, longer than ttl/4, is the documented residual window.)

    Not flaky: 20 of 20 runs passed beside a CPU-bound neighbour on the shared 2-core machine (load
    average 11-14), all three parameterisations each time:
        nice -n 0 python -c 'while True: pass' &   # killed afterwards
        for i in $(seq 20); do pytest tests/test_reliability_concurrency.py -q -x -k racing_writers; done
    (before: 5 of 10 runs failed, issue 31; the causes are in docs/reliability.md section 6)."""
    store_uri = request.getfixturevalue("s3_store") if backend == "s3" else (tmp_path / "out").as_uri()
    store = open_store(store_uri)
    rng = random.Random(seed)
    procs = {f"run-{i}": _start_writer(store_uri, f"run-{i}", rng.randrange(2**31)) for i in range(6)}
    paused = None
    if pause:
        paused, procs["late"] = _pause_first_holder_until_taken_over(store, store_uri, {p.pid: r for r, p in procs.items()})
    outcomes = {}
    for run, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outcomes[run] = json.loads(out)
    what = f"seed {seed}: " + json.dumps({r: (o["outcome"], o["error"]) for r, o in outcomes.items()})

    published = sorted((o for o in outcomes.values() if o["outcome"] == "published"), key=lambda o: o["published"])
    assert published, what
    for earlier, later in zip(published, published[1:]):
        assert earlier["published"] < later["acquired"], what  # one holder at a time
    for o in outcomes.values():
        if o["outcome"] == "refused":
            assert re.search(r"is being written by another run: writer lease \S+ is held by \S+:\d+:\w+", o["error"]), what
    result = json.loads(store.get_bytes("result.json"))
    winner = published[-1]["run"]
    assert result["run"] == winner, what
    assert store.get_bytes("last") == winner.encode(), what
    assert result["last_sha256"] == hashlib.sha256(winner.encode()).hexdigest(), what
    assert {store.get_bytes(f"checkpoints/step_{k}") for k in (1, 2, 3)} == {winner.encode()}, what
    if pause:
        frozen = outcomes[paused]
        # a taker's acquire returned after the frozen one's lease was written (the record's own
        # acquired_at: a clock read after acquire() returned can land after the SIGCONT, later
        # than the takeover, which made this test fail 5 of 10 runs on a loaded machine)
        takers = [o for o in published if o["run"] != paused and o["acquired"] > frozen["acquired_at"]]
        assert takers, what  # the expired lease was taken over (by the late writer or a slow starter)
        if frozen["outcome"] == "lost":
            assert "is no longer this run's (now held by" in frozen["error"], what
        else:  # frozen inside a publication (file://: under the lease's lock), so done before the takeover
            assert frozen["outcome"] == "published" and frozen["published"] < takers[0]["acquired"], what


def test_racing_pretrain_runs_into_one_out_leave_only_the_winners_outputs(zygote, tmp_path, _mlflow_template_db):
    """Three `dakd pretrain` runs with different lr started at random moments into ONE --out (the
    issue's symptom: both exited 0, one's checkpoints under the other's best.pt). Now exactly one
    exits 0 and every checkpoint and result.json under --out is that run's; the others exit 2
    naming the lease holder (or, if they came after it ended, the other config's last.pt)."""
    store = (tmp_path / "store").as_uri()
    src = make_split(store, "src", "source", 4, seed=1)
    out = f"{store}/shared-out"
    rng = random.Random(7)
    pids = {}
    for lr in (0.01, 0.005, 0.002):
        time.sleep(rng.uniform(0, 1.0))
        argv = ["pretrain", "--model", "deeplabv2_tiny", "--source-manifest", src, "--out", out,
                "--crop", str(H), str(W), "--source-resize", str(H), str(W), "--batch-size", "2",
                "--num-workers", "0", "--iterations", "3", "--checkpoint-every", "1", "--lr", str(lr),
                "--device", "cpu"]
        pids[lr] = zygote.spawn(argv, tmp_path / f"{lr}.log", mlflow_env(tmp_path, f"db{lr}", _mlflow_template_db))
    codes = {lr: zygote.wait(pid) for lr, pid in pids.items()}
    logs = {lr: (tmp_path / f"{lr}.log").read_text() for lr in pids}
    winners = [lr for lr, code in codes.items() if code == 0]
    assert len(winners) == 1 and sorted(codes.values()) == [0, 2, 2], (codes, logs)
    for lr in codes:
        if lr != winners[0]:
            assert re.search(r"dakd pretrain: error: (training output \S+ is being written by another run: writer "
                             r"lease \S+ is held by|\S+/last\.pt belongs to a run with a different config)", logs[lr]), logs[lr]
    root = tmp_path / "store" / "shared-out"
    result = json.loads((root / "result.json").read_text())
    for uri in [result["best_checkpoint_uri"], result["last_checkpoint_uri"],
                *[p.as_uri() for p in (root / "checkpoints").iterdir()]]:
        assert load_checkpoint(uri)["config"]["lr"] == winners[0], uri
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == [f"step_{s:07d}.pt" for s in (1, 2, 3)]
