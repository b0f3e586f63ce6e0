"""Object-store faults: ingest and cache-teacher against moto S3 behind tests/faults/s3_proxy.py,
and the per-request deadline (DAKD_S3_DEADLINE_S) against an endpoint that never answers.

The proxy answers a seeded share of requests with 500, 503, 503 SlowDown, 429, a stall past the
client's read timeout (DAKD_S3_READ_TIMEOUT) or a dropped connection. Both stages must finish
with outputs byte-identical to a clean run, and every fault must show up as a retry in
dakd_core.storage.retry_count(). The test prints the counts (run with -s to see them):

    .venv/bin/python -m pytest tests/test_reliability_s3_faults.py -q -s
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

import fixtures_datasets as F
from _distill_data import make_checkpoint
from dakd_core import storage
from dakd_core.cli import main
from dakd_core.errors import ConfigError, StoreError
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


class _SilentEndpoint:
    """A TCP endpoint that accepts every connection and never answers (a hung S3 gateway)."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])  # kept open, never read or answered
            except OSError:
                continue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.held + [self.sock]:
            conn.close()


def _deadline_env(monkeypatch, deadline: float) -> None:
    monkeypatch.setenv("DAKD_S3_DEADLINE_S", str(deadline))
    monkeypatch.setenv("DAKD_S3_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("DAKD_S3_READ_TIMEOUT", "1.5")
    monkeypatch.setenv("DAKD_S3_MAX_ATTEMPTS", "10")


def test_a_silent_endpoint_fails_within_the_deadline_naming_the_uri(s3_store, monkeypatch):
    """10 attempts x 1.5 s read timeout would take 15 s and more; the 6 s deadline stops the
    retries once the next one (with its longest backoff, 2 s, and 0.5 + 1.5 s of timeouts) no
    longer fits: after the second attempt, ~3 s in."""
    _deadline_env(monkeypatch, 6)
    store = open_store(s3_store)
    store.put_bytes("x.json", b"{}")  # the same settings against moto: a normal answer is unaffected
    assert store.get_bytes("x.json") == b"{}"
    with _SilentEndpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            store.get_bytes("x.json")
        elapsed = time.monotonic() - started
    assert elapsed < 6, elapsed
    assert re.fullmatch(
        rf"cannot read {re.escape(s3_store)}/x\.json: no answer within the 6 s deadline \(DAKD_S3_DEADLINE_S\) "
        rf"from {re.escape(endpoint)}: 2 attempt\(s\) in \d\.\d s, the last: ReadTimeoutError: .*", str(raised.value)), raised.value


def test_a_stage_against_a_silent_endpoint_exits_2_within_the_deadline(s3_store, monkeypatch, tmp_path, capsys):
    F.write_cityscapes(tmp_path / "cs", split="train", cities=("ulm",), per_city=1)
    _deadline_env(monkeypatch, 5)
    with _SilentEndpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        started = time.monotonic()
        code = main(["ingest", "--format", "cityscapes", "--root", str(tmp_path / "cs"), "--split", "train",
                     "--domain", "target", "--store", s3_store, "--name", "cs"])
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 5, (code, elapsed, err[-1000:])
    assert re.search(rf"dakd ingest: error: cannot read {re.escape(s3_store)}/datasets/cs/train/\S+: no answer "
                     rf"within the 5 s deadline .* from {re.escape(endpoint)}", err), err[-1000:]


def test_timeouts_longer_than_the_deadline_are_refused(s3_store, monkeypatch):
    monkeypatch.setenv("DAKD_S3_DEADLINE_S", "10")
    monkeypatch.setenv("DAKD_S3_READ_TIMEOUT", "30")
    with pytest.raises(ConfigError, match=r"DAKD_S3_CONNECT_TIMEOUT \+ DAKD_S3_READ_TIMEOUT \(5 \+ 30 s\) exceed "
                                          r"DAKD_S3_DEADLINE_S \(10 s\)"):
        open_store(s3_store).exists("x")
