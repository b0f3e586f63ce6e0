"""Stage reuse in local runs (issue 32 item 2): a task whose settings, inputs and code match an
earlier one returns that task's recorded outputs instead of running its stage, as KFP's cache
would; any difference, a half-written stage or an output changed since runs the stage."""

from __future__ import annotations

import io
import json
import os

import pytest

from dakd_core.orchestration import reuse
from dakd_core.orchestration.pins import pin
from dakd_core.storage import open_store, write_bytes


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(reuse.ENV_REUSE, "1")
    monkeypatch.delenv("DAKD_RUN_NAME", raising=False)
    return (tmp_path / "store").as_uri()


class Stage:
    """A stand-in for a stage's task: counts its calls and publishes one output, pinned."""

    def __init__(self, store: str):
        self.store, self.calls = store, 0

    def __call__(self, inputs: dict) -> dict:
        def call():
            self.calls += 1
            uri = f"{self.store}/stages/export/{self.calls}/model.onnx"
            write_bytes(uri, f"weights of call {self.calls}".encode())
            # a text output holding URIs (evaluate's report) is no URI to check
            return {"record": pin(uri), "num_parameters": 7, "latency": {"cpu": 1.5},
                    "report": f"# Report\n\nManifest: `{self.store}/datasets/val/manifest.parquet`\n" + "x" * 300}

        return reuse.reused_or_run("export", "exp", inputs, "export-task", call)


def _inputs(store: str, **changes) -> dict:
    return {"store_uri": store, "config": json.dumps({"resolution": [32, 64]}),
            "checkpoint": "file:///s/distill/best.pt#sha256=aa", "val_manifest": "file:///d/val.parquet#sha256=bb",
            **changes}


def test_same_settings_inputs_and_code_reuse_the_recorded_outputs(store, capsys):
    stage = Stage(store)
    first = stage(_inputs(store))
    assert stage.calls == 1 and "dakd reuse:" not in capsys.readouterr().out
    assert stage(_inputs(store)) == first and stage.calls == 1  # served: the stage did not run
    out = capsys.readouterr().out
    assert f"dakd reuse: task 'export-task' (export) reused the outputs recorded at {store}/reuse/export/" in out
    record = reuse.record_uri(store, "export", "exp", _inputs(store))
    assert json.loads(open_store(record.rsplit("/", 1)[0]).get_bytes(record.rsplit("/", 1)[1]))["outputs"] == first


@pytest.mark.parametrize("change", [
    {"config": json.dumps({"resolution": [32, 128]})},  # settings
    {"checkpoint": "file:///s/distill/best.pt#sha256=cc"},  # an upstream output with other bytes
    {"val_manifest": "file:///d/other.parquet#sha256=bb"},  # another input
], ids=["settings", "input-content", "input"])
def test_other_settings_or_inputs_run_the_stage(store, change):
    stage = Stage(store)
    stage(_inputs(store))
    assert stage(_inputs(store, **change))["record"] != stage(_inputs(store))["record"]
    assert stage.calls == 2  # the changed one ran; the original is still served
    assert reuse.reused_or_run("export", "other-experiment", _inputs(store), "t", lambda: {"ran": 1}) == {"ran": 1}


def test_another_code_version_runs_the_stage(store, monkeypatch, tmp_path):
    stage, sources_hash = Stage(store), reuse.code_version.__wrapped__
    stage(_inputs(store))
    monkeypatch.setattr(reuse, "code_version", lambda: "0123456789abcdef")
    stage(_inputs(store))
    assert stage.calls == 2
    # the version is the package's sources: an edit anywhere in it is another version
    package = tmp_path / "pkg"
    (package / "train").mkdir(parents=True)
    (package / "train" / "loss.py").write_text("WEIGHT = 0.1\n")
    before = sources_hash(package)
    (package / "train" / "loss.py").write_text("WEIGHT = 0.2\n")
    assert sources_hash(package) != before and len(before) == 16


def test_a_half_written_or_changed_output_is_never_served(store):
    stage = Stage(store)

    def dies_half_way():
        write_bytes(f"{store}/stages/export/partial/model.onnx", b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        reuse.reused_or_run("export", "exp", _inputs(store), "t", dies_half_way)
    stage(_inputs(store))
    assert stage.calls == 1  # no record was left by the dead call: the stage ran
    # an output rewritten since it was recorded: its pin no longer holds, the stage runs again
    first = stage(_inputs(store))["record"].partition("#")[0]
    write_bytes(first, b"other bytes")
    stage(_inputs(store))
    assert stage.calls == 2
    # an output removed since: the same
    open_store(store).delete(stage(_inputs(store))["record"].partition("#")[0].removeprefix(store + "/"))
    stage(_inputs(store))
    assert stage.calls == 3


def test_reuse_is_off_without_dakd_run_and_for_impure_stages(store, monkeypatch):
    calls = []
    for stage in ("ingest", "register", "promote"):
        for _ in range(2):
            reuse.reused_or_run(stage, "exp", _inputs(store), "t", lambda: calls.append(1) or {"n": 1})
    assert len(calls) == 6
    monkeypatch.setenv(reuse.ENV_REUSE, "0")  # dakd run --no-reuse; KFP never sets it
    stage = Stage(store)
    stage(_inputs(store))
    stage(_inputs(store))
    assert stage.calls == 2


def test_the_tracked_tasks_reuse_through_their_decorator(store, tmp_path, monkeypatch):
    """The wiring: a task decorated with `tracked` returns an earlier call's outputs."""
    from dakd_core.orchestration.tasks.common import tracked

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # as `dakd run` sets it
    calls = []

    @tracked("evaluate")
    def evaluate_task(*, store_uri: str, experiment: str, config: str) -> dict:
        calls.append(config)
        return {"miou": {"student": 0.4}, "metrics": ""}

    assert evaluate_task(store_uri=store, experiment="exp", config="{}") == {"miou": {"student": 0.4}, "metrics": ""}
    assert evaluate_task(store_uri=store, experiment="exp", config="{}")["miou"] == {"student": 0.4}
    evaluate_task(store_uri=store, experiment="exp", config='{"a": 1}')
    assert calls == ["{}", '{"a": 1}']


def test_a_reused_task_shows_on_the_terminal_in_the_run_folder_and_on_the_parent_run(store, tmp_path, monkeypatch):
    """A named local run keeps a note per reused task execution (two shards of one ParallelFor
    share a task name, not a note); register turns the notes into parent-run tags."""
    import mlflow

    from dakd_core.orchestration.parent_run import open_parent_run
    from dakd_core.orchestration.run_output import TaskProgress

    monkeypatch.setenv("DAKD_RUN_NAME", "r2")
    shard = Stage(store)
    for index in (0, 1, 0, 1):  # the first two run, the second two are served
        reuse.reused_or_run("cache-teacher", "exp", {**_inputs(store), "shard_index": index}, "cache-teacher-shard",
                            lambda: shard({"store_uri": store, "index": index}))
    run_store = open_store(store).child("runs/r2")
    assert reuse.reused_tasks(run_store) == ["cache-teacher-shard", "cache-teacher-shard"]
    records = {reuse.record_uri(store, "cache-teacher", "exp", {**_inputs(store), "shard_index": i}) for i in (0, 1)}
    # register (the uncached task that has the parent run) tags it with the notes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("DAKD_PARENT_RUN_ID", open_parent_run("exp", "local-r2", "r2", {"distill_paradigm": "c"}))
    tags = reuse.tag_reused(store, "r2")
    assert set(tags.values()) == records and len(tags) == 2
    assert all(key.startswith("dakd.reused.cache-teacher-shard.") for key in tags)
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # not mlflow's global URI
    on_parent = client.get_run(os.environ["DAKD_PARENT_RUN_ID"]).data.tags
    assert {k: v for k, v in on_parent.items() if k.startswith("dakd.reused.")} == tags
    reuse.forget_reused(run_store)
    assert reuse.reused_tasks(run_store) == [] and reuse.tag_reused(store, "r2") == {}
    record = records.pop()
    # kfp.local prints the task's output indented into the log; the progress line says it
    log, terminal = tmp_path / "r2.log", io.StringIO()
    log.write_text("")
    progress = TaskProgress(log, terminal, 2, {"export": "export", "evaluate": "evaluate"})
    log.write_text("".join([
        "10:00:00.000 - INFO - Executing task 'export'\n",
        f"    dakd reuse: task 'export' (export) reused the outputs recorded at {record}: same settings\n",
        "10:00:00.400 - INFO - Task 'export' finished with status SUCCESS\n",
        "10:00:01.000 - INFO - Executing task 'evaluate'\n",
        "10:00:03.000 - INFO - Task 'evaluate' finished with status SUCCESS\n",
    ]))
    progress.poll()
    assert terminal.getvalue().splitlines() == ["[1/2] export done in 0.4 s (reused an earlier run's outputs)",
                                                "[2/2] evaluate done in 2.0 s"]


def test_reusable_stages_are_the_pipelines_cached_tasks():
    """reuse.REUSABLE names the stages of the tasks the compiled pipeline caches (passthrough only
    hands an artifact on: no stage)."""
    from pathlib import Path

    import yaml

    spec = next(yaml.safe_load_all((Path(__file__).resolve().parents[1] / "pipelines" / "dakd_pipeline.yaml")
                                   .read_text()))
    cached = {task["componentRef"]["name"].removeprefix("comp-").rstrip("-0123456789")
              for comp in [spec["root"], *spec["components"].values()]
              for task in comp.get("dag", {}).get("tasks", {}).values()
              if task.get("cachingOptions", {}).get("enableCache") and "dag" not in spec["components"].get(
                  task["componentRef"]["name"], {})}
    as_stages = {"cache-teacher-shard": "cache-teacher", "cache-teacher-index": "cache-index"}
    assert {as_stages.get(c, c) for c in cached} - {"passthrough"} == reuse.REUSABLE
