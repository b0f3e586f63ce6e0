"""Stage reuse in local runs: KFP's cache rule for `dakd run` (issue 32).

On a cluster KFP serves a cached task's recorded outputs when an earlier successful execution had
the same component and inputs; kfp.local has no cache, so without this every `dakd run` calls
every stage again. Here a task of a pure stage (`REUSABLE`: the tasks the pipeline caches) that
finishes writes a record of its outputs to `{store}/reuse/<stage>/<key>.json`, after everything
the stage published (the write is atomic). `key` hashes the stage, the task's inputs (the plan's
settings JSON, the pinned upstream URIs, the store, the MLflow experiment) and the code version
(`code_version`: the dakd_core sources). A later task with the same key returns the record instead
of calling the stage, once every URI in it still exists and every pinned one still holds its
bytes. Hence:
- other settings, inputs or code: another key, and the stage runs;
- a stage that died half-way wrote no record: it runs (resuming from its own checkpoints);
- an output removed or changed since: the record is not served, the stage runs and records anew.

`dakd run` turns reuse on (`ENV_REUSE`); `--no-reuse` leaves it off, so every task runs (and
records its outputs again). On KFP it stays off: KFP's cache does the same there. A served record
says so on the terminal (the task prints `REUSE_MARK`, which run_output.TaskProgress shows) and
leaves a note in the run's folder (`runs/<run>/reused/<key>.json`): the summary counts the notes,
and the register task tags the run's MLflow parent run `dakd.reused.<task>.<key>` with each (so a
reused task itself never imports MLflow).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ENV_REUSE = "DAKD_REUSE"
# The stages of the tasks the pipeline caches (pipelines/dakd_pipeline.py `_platform(..., cache)`):
# pure functions of their inputs. Ingest, start, register, promote and finish are not.
REUSABLE = frozenset({"pretrain", "adapt", "cache-teacher", "cache-index", "distill", "export", "evaluate"})
REUSE_MARK = "dakd reuse:"
PARENT_REUSE_TAG = "dakd.reused."
_PACKAGE = Path(__file__).resolve().parents[1]  # dakd_core
# An output that is a URI, pinned or not: `scheme://...` and nothing else (a report's markdown
# holds URIs too, it is not one).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


@functools.lru_cache(maxsize=None)
def code_version(package: Path = _PACKAGE) -> str:
    """sha256 (16 hex digits) of the package's Python sources, path and bytes: any edit of the
    code that computes a stage, committed or not, is another version."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def record_uri(store_uri: str, stage: str, experiment: str, inputs: dict) -> str:
    """Where the record of this stage's task with these inputs, under this code, is kept."""
    from dakd_core.orchestration.tasks.common import content_key

    key = content_key("reuse", stage, experiment, inputs, code_version())
    return f"{store_uri.rstrip('/')}/reuse/{stage}/{key}.json"


def _uris(value) -> list[str]:
    """Every output that is a URI (nested lists and dicts included)."""
    if isinstance(value, dict):
        return [u for v in value.values() for u in _uris(v)]
    if isinstance(value, list):
        return [u for v in value for u in _uris(v)]
    return [value] if isinstance(value, str) and _URI.fullmatch(value) else []


def servable(uri: str) -> dict | None:
    """The outputs recorded at `uri`, if every URI in them still exists and every pinned one
    still holds its bytes; None otherwise (no record, or an output removed or changed since)."""
    from dakd_core.errors import DataError, StoreError
    from dakd_core.orchestration.pins import resolve, split
    from dakd_core.storage import read_bytes, uri_exists

    if not uri_exists(uri):
        return None
    outputs = json.loads(read_bytes(uri))["outputs"]
    try:
        for value in _uris(outputs):
            if split(value)[1] is not None:
                resolve(value)  # DataError if the bytes changed, StoreError if gone
            elif not uri_exists(value):
                return None
    except (DataError, StoreError):
        return None
    return outputs


def reused_or_run(stage: str, experiment: str, inputs: dict, kfp_task: str, call: Callable[[], dict]) -> dict:
    """`call()`'s outputs; in a local run with reuse on, those an earlier task of this stage with
    the same inputs and code recorded, if they still hold (see the module doc)."""
    if os.environ.get(ENV_REUSE) != "1" or stage not in REUSABLE:
        return call()
    from dakd_core.storage import write_bytes

    uri = record_uri(inputs["store_uri"], stage, experiment, inputs)
    outputs = servable(uri)
    if outputs is not None:
        _announce(stage, inputs["store_uri"], kfp_task, uri)
        return outputs
    outputs = call()
    record = {"stage": stage, "code_version": code_version(), "outputs": outputs,
              "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_bytes(uri, json.dumps(record, sort_keys=True).encode())  # last: a half-written stage has none
    return outputs


def _announce(stage: str, store_uri: str, kfp_task: str, uri: str) -> None:
    """Say that `kfp_task` reused the record at `uri`: the log line the terminal's progress shows,
    and, in a named local run, a note in the run's folder."""
    from dakd_core.orchestration.context import ENV_RUN_NAME
    from dakd_core.orchestration.tasks.common import run_prefix
    from dakd_core.storage import write_bytes

    print(f"{REUSE_MARK} task '{kfp_task}' ({stage}) reused the outputs recorded at {uri}: same settings, inputs "
          "and code as an earlier run (dakd run --no-reuse runs it again)", flush=True)
    run_name = os.environ.get(ENV_RUN_NAME, "")
    if not run_name:
        return
    note = {"task": kfp_task, "stage": stage, "record": uri}
    key = uri.rsplit("/", 1)[-1]  # one note per task execution: the 4 shards of one ParallelFor share a name
    write_bytes(f"{run_prefix(store_uri, run_name)}/reused/{key}", json.dumps(note).encode())


def reused_notes(run_store) -> dict[str, dict]:
    """The notes of the tasks of a local run (its `runs/<run>` store) that reused recorded
    outputs: record key -> {task, stage, record}."""
    return {key.rsplit("/", 1)[-1].removesuffix(".json"): json.loads(run_store.get_bytes(key))
            for key in sorted(run_store.list("reused/"))}


def reused_tasks(run_store) -> list[str]:
    """The task names of a run's reused task executions, sorted (one per execution)."""
    return sorted(note["task"] for note in reused_notes(run_store).values())


def tag_reused(store_uri: str, run_name: str) -> dict[str, str]:
    """Tag the run's MLflow parent run (the calling task's) once per reused task execution,
    `dakd.reused.<task>.<key>` -> the record it returned; returns the tags (none on KFP: no notes)."""
    from dakd_core.orchestration.parent_run import tag_parent
    from dakd_core.orchestration.tasks.common import run_prefix
    from dakd_core.storage import open_store

    notes = reused_notes(open_store(run_prefix(store_uri, run_name)))
    tags = {f"{PARENT_REUSE_TAG}{note['task']}.{key[:8]}": note["record"] for key, note in notes.items()}
    if tags:
        tag_parent(tags)
    return tags


def forget_reused(run_store) -> None:
    """Before a local run: an earlier run of the same name leaves no note of what it reused."""
    for key in run_store.list("reused/"):
        run_store.delete(key)
