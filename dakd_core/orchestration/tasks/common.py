"""What every task shares: the tracking decorator, content-addressed stage outputs, the run
prefix, metrics conversion, and the record that keeps a deterministic failure from being retried.

Cached tasks (the GPU stages) take no per-run value: no KFP run id, no MLflow parent run id, no
run name. Their outputs go to `{store}/stages/<stage>/<key>`, the key a hash of the stage's
settings and its pinned inputs, so identical inputs give the identical output URI, a KFP cache hit
hands on a URI that still holds those bytes, and a rerun of `dakd run` resumes the finished stage
instead of training again. Their MLflow runs carry the tag `dakd.stage_output`; the uncached
register task links them to the pipeline's parent run by that tag.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import re
from collections.abc import Callable

from dakd_core.errors import ConfigError, DataError
from dakd_core.orchestration.context import task_context
from dakd_core.orchestration.params import RUN_NAME_PATTERN
from dakd_core.orchestration.preflight import check_task
from dakd_core.orchestration.reuse import reused_or_run
from dakd_core.tracking import ENV_RUN_TAGS

# `dakd run` sets it ({store}/runs/{run}/timings): each task records its own seconds there.
ENV_TIMINGS_URI = "DAKD_TIMINGS_URI"
STAGE_OUTPUT_TAG = "dakd.stage_output"
# Errors that the same inputs raise again on every attempt: a retry must not recompute them.
DETERMINISTIC = (ConfigError, DataError)


def hw(size: list) -> tuple[int, int]:
    """An (H, W) list parameter as ints: KFP passes list parameters as JSON, ints may arrive as floats or their strings."""
    h, w = (int(float(v)) for v in size)
    return h, w


def run_prefix(store_uri: str, run_name: str) -> str:
    """`{store}/runs/{run_name}`: where the uncached tasks of one pipeline run write."""
    # The name comes from a UI text box: refuse what would escape runs/ or nest ("a/../../x").
    if not re.fullmatch(RUN_NAME_PATTERN, run_name) or not run_name:
        raise ConfigError(f"run_name {run_name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return f"{store_uri.rstrip('/')}/runs/{run_name}"


def content_key(*parts) -> str:
    """A short hash of JSON-able parts (settings, pinned input URIs): equal inputs, equal key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def stage_out(store_uri: str, stage: str, settings: dict, inputs: dict) -> str:
    """The content-addressed output folder of a stage, tagged on its MLflow runs."""
    out = f"{store_uri.rstrip('/')}/stages/{stage}/{content_key(stage, settings, inputs)}"
    tags = json.loads(os.environ.get(ENV_RUN_TAGS) or "{}")
    os.environ[ENV_RUN_TAGS] = json.dumps({**tags, STAGE_OUTPUT_TAG: out}, sort_keys=True)  # restored by task_context
    return out


def run_identity(role: str, method: str = "", paradigm: str = "", label: str = "") -> tuple[str, dict]:
    """(label, tags) of the MLflow runs of one task: named `<stage>-<label>` (label: the role
    unless given) and tagged dakd.role / dakd.method / dakd.paradigm (empty ones left out)."""
    tags = {"dakd.role": role, "dakd.method": method, "dakd.paradigm": paradigm}
    return label or role, {k: v for k, v in tags.items() if v}


def _failure_record(stage: str, kwargs: dict) -> str | None:
    """Where a deterministic failure of this task's exact inputs (and this dakd version) is kept."""
    from dakd_core import __version__

    store = kwargs.get("store_uri")
    if not store:
        return None
    return f"{store.rstrip('/')}/failures/{stage}-{content_key(__version__, stage, kwargs)}.json"


def _not_retried(stage: str, kwargs: dict, call: Callable[[], dict]) -> dict:
    """Run `call`; a ConfigError/DataError is recorded, and a retry of the same inputs (KFP's retry
    policy restarts any failed pod, it cannot tell error kinds apart) re-raises it at once instead
    of training for hours to fail the same way."""
    from dakd_core.storage import read_bytes, uri_exists, write_bytes

    record = _failure_record(stage, kwargs)
    if record and uri_exists(record):
        earlier = json.loads(read_bytes(record))
        cls = DataError if earlier["kind"] == "DataError" else ConfigError
        raise cls(f"{earlier['message']} (raised by an earlier attempt with the same inputs, {record}: not retried)")
    try:
        return call()
    except DETERMINISTIC as e:
        if record:
            write_bytes(record, json.dumps({"kind": type(e).__name__, "message": str(e)}).encode())
        raise


def tracked(stage: str, identity: Callable[[dict], tuple[str, dict]] | None = None):
    """Decorate a `<stage>_task`: adds the tracking keyword arguments the components pass (the task
    name, the MLflow experiment; uncached tasks also the KFP run id and the parent run), checks
    first that the task logs to the pipeline's MLflow store (preflight.check_task), records the
    stage's seconds when `dakd run` asks for them, and keeps deterministic failures from being
    retried. `identity(task kwargs) -> (label, tags)` (see `run_identity`) names and tags the
    task's stage runs."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*, kfp_run_id: str = "", kfp_task: str = stage, parent_run_id: str = "", experiment: str = "dakd",
                  **kwargs):
            label, tags = identity(kwargs) if identity else ("", {})
            timings = os.environ.get(ENV_TIMINGS_URI, "")
            try:
                # before anything runs, and outside _not_retried: a missing secret is no property of the inputs
                check_task(kfp_task, kwargs, parent_run_id)
                with task_context(kfp_run_id, kfp_task, parent_run_id, experiment, timings_uri=timings,
                                  run_label=label, run_tags=tags):
                    run = functools.partial(_not_retried, stage, kwargs, lambda: fn(experiment=experiment, **kwargs))
                    return reused_or_run(stage, experiment, kwargs, kfp_task, run)  # local runs: reuse.py
            finally:
                freeze_for_exit()

        return inner

    return wrap


def freeze_for_exit() -> None:
    """In a KFP task process (the executor sets _KFP_RUNTIME=true, on a cluster and in kfp.local),
    move every object alive now to the collector's permanent generation. The process ends right
    after the stage: the garbage collections of interpreter shutdown would otherwise walk the
    hundreds of thousands of objects torch and MLflow created (a process that imported both and
    logged one MLflow run spent 1.7 s of CPU shutting down, 0.2 s frozen; benchmarks/
    bench_task_overhead.py times a task process both ways). Nothing is skipped: atexit handlers
    and the exit status stay as they were. Elsewhere (tests, the CLI calling a task in process) the
    objects would stay uncollectable, so nothing is frozen there."""
    if os.environ.get("_KFP_RUNTIME") == "true":
        gc.freeze()


def log_metrics(artifact, metrics: dict) -> None:
    """Numeric scalars of a stage's metrics into a KFP Metrics artifact (others are skipped)."""
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            artifact.log_metric(key, float(value))
