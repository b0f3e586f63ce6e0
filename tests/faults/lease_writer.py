"""One racing writer for tests/test_reliability_concurrency.py, run as its own process.

    python tests/faults/lease_writer.py STORE_URI RUN_ID SEED TTL_S [START_DELAY_S]

Follows the protocol of dakd's stages (engine.RunKeeper, ingest, cache): take the output's writer
lease, then for each of 3 steps sleep a random while and, inside `lease.publishing()`, write
`checkpoints/step_k` and `last` (both holding RUN_ID); then, inside it again, publish
`result.json` = {"run": RUN_ID, "last_sha256": sha256 of `last` as read back}. Prints one JSON line:
{"run", "outcome": "published" | "refused" | "lost", "acquired_at", "acquired", "published", "error"}:
`acquired_at` is the lease record's own stamp (taken before the write that took the lease, so a
SIGSTOP cannot move it later), `acquired` a clock read after acquire() returned (no earlier than the
take-over; a SIGSTOP may move it later), `published` a clock read inside the last publication.
The test may SIGSTOP this process at any moment (a paused writer whose lease expires).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time

from dakd_core.errors import StoreError
from dakd_core.lease import WriterLease
from dakd_core.storage import open_store


def main(store_uri: str, run: str, seed: int, ttl: float, start_delay: float | None = None) -> dict:
    rng = random.Random(seed)
    store = open_store(store_uri)
    time.sleep(rng.uniform(0, 2 * ttl) if start_delay is None else start_delay)
    outcome = {"run": run, "outcome": "refused", "acquired_at": None, "acquired": None, "published": None,
               "error": None}
    try:
        lease = WriterLease(store, f"output {store_uri}", ttl_s=ttl).acquire()
    except StoreError as e:
        outcome["error"] = str(e)
        return outcome
    outcome.update(acquired_at=lease.acquired_at, acquired=time.time())
    try:
        for step in range(1, 4):
            time.sleep(rng.uniform(0, ttl / 2))
            with lease.publishing(f"step {step}"):
                store.put_bytes(f"checkpoints/step_{step}", run.encode())
                store.put_bytes("last", run.encode())
        with lease.publishing("result.json"):
            last = hashlib.sha256(store.get_bytes("last")).hexdigest()
            store.put_bytes("result.json", json.dumps({"run": run, "last_sha256": last}).encode())
            outcome.update(outcome="published", published=time.time())
    except StoreError as e:
        outcome.update(outcome="lost", error=str(e))
    finally:
        lease.release()
    return outcome


if __name__ == "__main__":
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else None
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), delay)), flush=True)
