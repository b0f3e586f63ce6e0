"""Object-store faults: ingest and cache-teacher against moto S3 behind tests/faults/s3_proxy.py.

The proxy answers a seeded share of requests with 500, 503, 503 SlowDown, 429, a stall past the
client's read timeout (DAKD_S3_READ_TIMEOUT) or a dropped connection. Both stages must finish
with outputs byte-identical to a clean run, and every fault must show up as a retry in
dakd_core.storage.retry_count(). The test prints the counts (run with -s to see them):

    .venv/bin/python -m pytest tests/test_reliability_s3_faults.py -q -s
"""

from __future__ import annotations

import pytest

import fixtures_datasets as F
from _distill_data import make_checkpoint
from dakd_core import storage
from dakd_core.cli import main
from dakd_core.storage import open_store
from faults.s3_proxy import FAULTS, FaultProxy

SAMPLES = 8


def _run_stages(root, store: str, teacher: str) -> None:
    """ingest (2 threads) then cache-teacher, through the real CLI."""
    assert main(["ingest", "--format", "cityscapes", "--root", str(root), "--split", "train", "--domain", "target",
                 "--store", store, "--name", "cs", "--workers", "2"]) == 0
    manifest = f"{store}/datasets/cs/train/manifest.parquet"
    assert main(["cache-teacher", "--teacher", teacher, "--manifest", manifest, "--store", store, "--name", "t",
                 "--shard-size", "3", "--batch-size", "2", "--size", "32", "64", "--device", "cpu"]) == 0


def _snapshot(store) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list() if key != "teacher.pt"}


def test_ingest_and_cache_survive_s3_faults_byte_identical(tmp_path, s3_server, s3_store, monkeypatch, capsys):
    F.write_cityscapes(tmp_path / "cs", split="train", cities=("ulm",), per_city=SAMPLES)
    store = open_store(s3_store)
    teacher = make_checkpoint(f"{s3_store}/teacher.pt", seed=0)

    _run_stages(tmp_path / "cs", s3_store, teacher)
    clean = _snapshot(store)
    assert len([k for k in clean if k.startswith("datasets/cs/train/images/")]) == SAMPLES
    assert "teacher_cache/t/index.parquet" in clean
    for key in clean:
        store.delete(key)

    with FaultProxy(s3_server, seed=10, rate=0.3, max_faults=24, stall_s=1.5, max_timeouts=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("DAKD_S3_READ_TIMEOUT", "1.0")  # the stall (1.5 s) outlasts it
        monkeypatch.setenv("DAKD_S3_CONNECT_TIMEOUT", "1.0")
        monkeypatch.setenv("DAKD_S3_MAX_ATTEMPTS", "10")
        proxy.arm()
        before = storage.retry_count()
        _run_stages(tmp_path / "cs", s3_store, teacher)
        retries = storage.retry_count() - before
        proxy.disarm()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)

    faulty = _snapshot(store)
    assert sorted(faulty) == sorted(clean)
    assert all(faulty[k] == clean[k] for k in clean), [k for k in clean if faulty[k] != clean[k]]

    # Every kind was injected; each fault cost exactly one retry (a slow moto answer under load
    # may add a genuine timeout retry, hence the small slack).
    assert set(proxy.counts) == set(FAULTS), proxy.counts
    assert proxy.injected <= retries <= proxy.injected + 3, (proxy.counts, retries)
    with capsys.disabled():
        print(f"\n[s3 faults] {proxy.requests} requests, {proxy.injected} faults injected "
              f"{dict(sorted(proxy.counts.items()))}, {retries} retries counted by dakd_core.storage; "
              f"{len(clean)} objects byte-identical to the clean run")
