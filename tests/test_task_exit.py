"""Task processes freeze their heap before exit (benchmarks/bench_task_overhead.py measures why),
and only task processes do."""

from __future__ import annotations

import gc
import json

import pytest

from dakd_core.orchestration.tasks.common import ENV_TIMINGS_URI, tracked


@tracked("probe")
def _stage(*, store_uri: str, run_name: str, experiment: str, fail: bool = False) -> int:
    if fail:
        raise RuntimeError("stage failed")
    return 7


def test_tracked_task_freezes_the_heap_only_in_a_kfp_task_process(tmp_path, monkeypatch):
    store = tmp_path.as_uri()
    gc.unfreeze()
    monkeypatch.delenv("_KFP_RUNTIME", raising=False)
    monkeypatch.setenv(ENV_TIMINGS_URI, (tmp_path / "timings").as_uri())  # as `dakd run` sets it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # so does every task's
    try:
        # in process (tests, the CLI): a frozen heap would never be collected again
        assert _stage(store_uri=store, run_name="r") == 7 and gc.get_freeze_count() == 0
        # a KFP task process (the executor sets _KFP_RUNTIME=true): frozen, failed stages too
        monkeypatch.setenv("_KFP_RUNTIME", "true")
        with pytest.raises(RuntimeError, match="stage failed"):
            _stage(store_uri=store, run_name="r", fail=True)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    # the stage's seconds are still recorded for `dakd run`'s overhead figure
    assert json.loads((tmp_path / "timings/probe.json").read_text())["task"] == "probe"
