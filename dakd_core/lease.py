"""One writer per output: a lease object in the store itself.

Every stage that publishes into an output location (a training run's `--out`, an ingest's
`datasets/NAME/SPLIT`, a slice of a teacher cache) first takes the location's writer lease, the
object `.<scope>.dakd-lease` there (JSON; hidden from `ObjectStore.list`):

    {"owner": "<host>:<pid>:<random>", "host": ..., "pid": ..., "what": ...,
     "acquired_at": <unix s>, "expires_at": <unix s>, "released": false}

- Taking it is a conditional write (``ObjectStore.put_if``: S3 If-None-Match/If-Match, a flock'd
  compare on file://), so of any number of writers racing for a location exactly one wins; the
  others read the winner's record and fail with a StoreError naming it (exit 2).
- A holder renews it every ttl/3 from a daemon thread. A lease is free when released, expired
  (its holder stopped renewing: crash, kill -9, a lost node), or held by a process of this host
  that no longer exists (so a local re-run after a crash need not wait for the expiry).
- Every publication (checkpoints, result.json, a manifest, a cache index) is made inside
  `publishing()`: the record must still be its own with at least a quarter of the ttl left, so a
  writer that was paused past its lease (and may have been superseded) publishes nothing. On
  file:// the check and the put hold the lease object's lock, which a takeover needs too; on S3
  a takeover between the check and the end of the put needs that put to outlast ttl/4.
- Released leases stay in place as `released: true` records (S3 has no compare-and-delete on
  every backend), telling who wrote the location last.

Expiry compares wall clocks of different machines: keep them NTP-synced (skew must stay well
below the ttl, `DAKD_LEASE_TTL_S`, default 120 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from dakd_core.errors import StoreError
from dakd_core.storage import LEASE_SUFFIX, ObjectStore, env_number

DEFAULT_TTL_S = 120.0


def lease_key(scope: str) -> str:
    return f".{scope}{LEASE_SUFFIX}"


def ttl_seconds() -> float:
    return env_number("DAKD_LEASE_TTL_S", DEFAULT_TTL_S, float, 0.5, 86400)


def _process_gone(record: dict) -> bool:
    """The holder ran on this host and its process no longer exists."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, another user's
    return False


class WriterLease:
    """The writer lease of one output location; use as a context manager.

    `store` is the output location, `what` says what is written there (in error messages)."""

    def __init__(self, store: ObjectStore, what: str, scope: str = "writer", ttl_s: float | None = None):
        self.store, self.what = store, what
        self.key = lease_key(scope)
        self.uri = store.url(self.key)
        self.ttl = ttl_seconds() if ttl_s is None else ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._version: str | None = None
        # When this lease was taken: stamped after the read that found it free, before the
        # conditional write that took it (so it precedes anything published under it and follows
        # the previous holder's release). The record's `acquired_at`.
        self.acquired_at: float | None = None
        self._lock = threading.Lock()  # the heartbeat and check/release share _version
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the heartbeat gave the lease up

    # -- records
    def _record(self, released: bool = False, acquired_at: float | None = None) -> bytes:
        now = time.time()
        return json.dumps({
            "owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "what": self.what,
            "acquired_at": acquired_at or now, "expires_at": now + self.ttl, "released": released,
        }, sort_keys=True).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        current = self.store.read_versioned(self.key)
        if current is None:
            return None, None
        data, version = current
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            record = {"owner": "<unreadable lease record>", "expires_at": 0}  # free to take over
        return record, version

    @staticmethod
    def _is_live(record: dict) -> bool:
        expires = record.get("expires_at")
        return (not record.get("released") and isinstance(expires, (int, float))
                and expires > time.time() and not _process_gone(record))

    def _held_by_other(self, record: dict) -> StoreError:
        left = max(0.0, float(record["expires_at"]) - time.time())
        return StoreError(
            f"{self.what} is being written by another run: writer lease {self.uri} is held by "
            f"{record.get('owner')} (it expires in {left:.0f} s unless renewed); use another output "
            f"location, or wait for that run to end")

    # -- acquire / renew / release
    def acquire(self) -> WriterLease:
        for _ in range(5):  # each lost compare-and-set means another writer moved; re-read
            record, version = self._read()
            if record is not None and self._is_live(record) and record.get("owner") != self.owner:
                raise self._held_by_other(record)
            self.acquired_at = time.time()
            new = self.store.put_if(self.key, self._record(acquired_at=self.acquired_at), version)
            if new is not None:
                self._version = new
                self._thread = threading.Thread(target=self._heartbeat, name="dakd-lease", daemon=True)
                self._thread.start()
                return self
        raise StoreError(f"could not take writer lease {self.uri} of {self.what}: it changed hands 5 times")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with self._lock:
                    new = self.store.put_if(self.key, self._record(acquired_at=self.acquired_at), self._version)
                    if new is None:
                        self.lost = "another writer took it over"
                        return
                    self._version = new
            except StoreError:
                continue  # a transient store failure: try again next beat; check() sees the expiry near

    def check(self, publishing: str) -> None:
        """StoreError unless the lease is still ours with >= ttl/4 left (call right before publishing)."""
        record, _ = self._read()
        if self.lost is not None or record is None or record.get("owner") != self.owner or record.get("released"):
            holder = record.get("owner") if record else "nobody"
            raise StoreError(
                f"not publishing {publishing}: the writer lease {self.uri} of {self.what} is no longer this "
                f"run's (now held by {holder}); another run writes this location")
        left = float(record.get("expires_at", 0)) - time.time()
        if left < self.ttl / 4:
            when = f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"
            raise StoreError(
                f"not publishing {publishing}: the writer lease {self.uri} of {self.what} {when} "
                f"(renewal failing?); another run could take it over meanwhile")

    @contextlib.contextmanager
    def publishing(self, what: str):
        """`check(what)`, then the block (the publication's put). On file:// both happen under
        the lease object's lock, so no takeover can slip between the check and the put; on S3 the
        window is the put's duration, covered by the ttl/4 margin `check` demands."""
        with self.store.write_lock(self.key):
            self.check(what)
            yield

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._version is not None:
                try:  # lost to a takeover: the record is not ours to mark
                    self.store.put_if(self.key, self._record(released=True, acquired_at=self.acquired_at), self._version)
                except StoreError:
                    pass  # the record then expires by itself (ttl); the run's outputs are complete
                self._version = None

    def __enter__(self) -> WriterLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
