"""Writer leases (dakd_core/lease.py) and the conditional writes under them, on file:// and S3 (moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from dakd_core.errors import StoreError
from dakd_core.lease import WriterLease, lease_key
from dakd_core.storage import open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store((tmp_path / "out").as_uri())
    return open_store(request.getfixturevalue("s3_store"))


def test_put_if_is_compare_and_set(store):
    assert store.read_versioned("k") is None
    v1 = store.put_if("k", b"one", None)
    assert v1 is not None and store.read_versioned("k") == (b"one", v1)
    assert store.put_if("k", b"two", None) is None  # not absent any more
    v2 = store.put_if("k", b"two", v1)
    assert v2 is not None and v2 != v1
    assert store.put_if("k", b"three", v1) is None  # stale version
    assert store.get_bytes("k") == b"two"


def test_second_writer_is_refused_naming_the_holder_until_release(store):
    first = WriterLease(store, "output X", ttl_s=30).acquire()
    try:
        with pytest.raises(StoreError, match=rf"output X is being written by another run: writer lease "
                                             rf"\S+\.writer\.dakd-lease is held by {first.owner} \(it expires in \d+ s"):
            WriterLease(store, "output X", ttl_s=30).acquire()
        first.check("result.json")
    finally:
        first.release()
    record = json.loads(store.get_bytes(lease_key("writer")))
    assert record["released"] is True and record["owner"] == first.owner
    assert store.list() == []  # the lease record is no output
    with WriterLease(store, "output X", ttl_s=30) as second:
        second.check("result.json")


def test_expired_lease_is_taken_over_and_the_old_holder_may_not_publish(store):
    stalled = WriterLease(store, "output X", ttl_s=0.6).acquire()
    stalled._stop.set()  # a paused process: no more renewals
    stalled._thread.join()
    time.sleep(0.8)
    with WriterLease(store, "output X", ttl_s=30) as taker:
        with pytest.raises(StoreError, match=rf"not publishing result\.json: the writer lease \S+ of output X "
                                             rf"is no longer this run's \(now held by {taker.owner}\)"):
            stalled.check("result.json")
        stalled.release()  # must not mark the taker's lease released
        taker.check("result.json")
        assert json.loads(store.get_bytes(lease_key("writer")))["owner"] == taker.owner


def test_a_lease_about_to_expire_refuses_publication(store):
    lease = WriterLease(store, "output X", ttl_s=2.0).acquire()
    lease._stop.set()  # renewals stop
    lease._thread.join()
    expires = json.loads(store.get_bytes(lease_key("writer")))["expires_at"]
    time.sleep(max(0.0, expires - 0.3 - time.time()))  # ~0.3 s left < ttl/4
    with pytest.raises(StoreError, match=r"not publishing best\.pt: the writer lease \S+ of output X "
                                         r"(expires in 0\.\d s|expired \d+\.\d s ago) \(renewal failing\?\)"):
        lease.check("best.pt")


def test_heartbeat_keeps_a_short_lease_alive(tmp_path):
    store = open_store(tmp_path.as_uri())
    with WriterLease(store, "output X", ttl_s=1.2) as lease:
        time.sleep(3.0)  # 2.5 ttls
        lease.check("result.json")
        with pytest.raises(StoreError, match="being written by another run"):
            WriterLease(store, "output X", ttl_s=1.2).acquire()


def test_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    """kill -9 leaves an unexpired lease; a re-run on the same host takes it over without waiting."""
    code = ("import sys, os; from dakd_core.storage import open_store; from dakd_core.lease import WriterLease; "
            "WriterLease(open_store(sys.argv[1]), 'output X', ttl_s=3600).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, tmp_path.as_uri()], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    store = open_store(tmp_path.as_uri())
    record = json.loads(store.get_bytes(lease_key("writer")))
    assert record["released"] is False and record["expires_at"] > time.time() + 3000
    with WriterLease(store, "output X") as lease:
        lease.check("result.json")
