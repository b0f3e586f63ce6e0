"""The pipeline: committed YAML up to date, DAG and Kubernetes settings, and one tiny end-to-end
`dakd run` through kfp.local (`dakd submit`: tests/test_submit.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "dakd_pipeline.yaml"
DAKD = [sys.executable, "-m", "dakd_core"]


def _clean_env(**extra) -> dict:
    """The environment `dakd compile` must see to reproduce the committed YAML (default images,
    retries on)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAKD_IMAGE", "DAKD_CPU_IMAGE", "DAKD_LOCAL_RUN", "DAKD_CACHE_SHARDS")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def spec() -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of the committed YAML."""
    docs = list(yaml.safe_load_all(COMMITTED.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_is_up_to_date(tmp_path):
    out = tmp_path / "p.yaml"
    res = subprocess.run([*DAKD, "compile", "-o", str(out)], env=_clean_env(), capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert out.read_text() == COMMITTED.read_text(), "pipelines/dakd_pipeline.yaml is stale: run `dakd compile`"


def test_image_is_chosen_at_compile_time(tmp_path):
    out = tmp_path / "p.yaml"
    env = _clean_env(DAKD_IMAGE="registry.example/dakd:abc123")
    res = subprocess.run([*DAKD, "compile", "-o", str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    images = {e["container"]["image"] for e in yaml.safe_load_all(out.read_text()).__next__()["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/dakd:abc123", "registry.example/dakd:abc123-cpu"}


def _executor(spec, task_name):
    pipeline, _ = spec
    comp = _find_task(pipeline, task_name)["componentRef"]["name"]
    return pipeline["components"][comp]["executorLabel"]


def _find_task(pipeline, name):
    for comp in [pipeline["root"], *pipeline["components"].values()]:
        tasks = comp.get("dag", {}).get("tasks", {})
        if name in tasks:
            return tasks[name]
    raise KeyError(name)


def test_dag_has_every_stage_in_order(spec):
    pipeline, _ = spec
    for name in ["start", "ingest", "ingest-2", "pretrain", "pretrain-2", "adapt", "adapt-2",
                 "cache-teacher-shard", "cache-teacher-index", "distill", "distill-2", "passthrough",
                 "export", "evaluate", "register", "promote", "finish"]:
        _find_task(pipeline, name)
    # the cache fan-out is a sub-pipeline: it waits for the adapted teacher, its index for every shard
    assert "adapt" in _find_task(pipeline, "cache-teacher")["dependentTasks"]
    assert _find_task(pipeline, "cache-teacher-index")["dependentTasks"] == ["for-loop-2"]
    assert "cache-teacher-shard" in pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(_find_task(pipeline, "register")["dependentTasks"]) >= {"evaluate", "export"}
    assert set(_find_task(pipeline, "promote")["dependentTasks"]) == {"register", "start"}
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    for p in ["data_source_format", "data_source_uri", "data_target_format", "data_target_uri", "teacher_model",
              "student_model", "pretrain_iterations", "student_batch_size", "distill_lambda_kl",
              "distill_lambda_kl_aux", "distill_lambda_mse", "distill_lambda_pseudo", "distill_lambda_target",
              "distill_temperature", "distill_paradigm", "train_seed", "data_store_uri", "mlflow_experiment",
              "mlflow_registered_model", "adapt_method"]:
        assert p in params, p
    assert params["distill_paradigm"]["defaultValue"] == "d" and params["distill_lambda_kl"]["defaultValue"] == 0.1
    # KFP's own run name names the run (start gets it as a placeholder): no parameter competes with it
    assert "run_name" not in params
    assert _find_task(pipeline, "start")["inputs"]["parameters"]["kfp_run_name"] == \
        {"runtimeValue": {"constant": "{{$.pipeline_job_name}}"}}


def test_teacher_cache_runs_at_the_distill_stages_resize(spec):
    """Issue 17 item 1: every cache task (shard slices and the index fan-in) runs the teacher at the
    resizes the distill stage gives the student (source_resize with the source manifest,
    target_resize with the target one). The plan derives the cache's sizes from the distill
    settings; the compiled spec hands start's cache_teacher settings down unchanged through the
    fan-out sub-pipeline and its loop, next to the distill task's own settings from start."""
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan

    for paradigm in ("b", "d"):
        plan = build_plan(PipelineParams(train_source_resize_h=360, train_source_resize_w=640,
                                         train_target_resize_h=256, train_target_resize_w=600,
                                         distill_paradigm=paradigm))
        assert plan["cache_teacher"] == {"sizes": [[360, 640], [256, 600]]}
        for stage in ("distill_first", "distill_second")[: 2 if paradigm == "d" else 1]:
            assert [plan[stage]["source_resize"], plan[stage]["target_resize"]] == plan["cache_teacher"]["sizes"]
    pipeline, _ = spec
    fanout, distill = _find_task(pipeline, "cache-teacher"), _find_task(pipeline, "distill")
    sub = pipeline["components"][fanout["componentRef"]["name"]]["dag"]["tasks"]
    loop = sub["for-loop-2"]["inputs"]["parameters"]
    shard = _find_task(pipeline, "cache-teacher-shard")["inputs"]["parameters"]
    index = sub["cache-teacher-index"]["inputs"]["parameters"]
    start = {"producerTask": "start"}
    assert distill["inputs"]["parameters"]["config"] == {"taskOutputParameter": {**start, "outputParameterKey": "distill_first"}}
    # start's output -> sub-pipeline input -> loop channel -> shard; sub-pipeline input -> index
    assert fanout["inputs"]["parameters"]["config"] == {"taskOutputParameter": {**start, "outputParameterKey": "cache_teacher"}}
    assert loop["pipelinechannel--config"] == index["config"] == {"componentInputParameter": "config"}
    assert shard["config"] == {"componentInputParameter": "pipelinechannel--config"}
    # ... and the manifests arrive in the order the sizes are paired with: [source, target]
    assert shard["manifests"]["runtimeValue"]["constant"] == [
        "{{$.inputs.parameters['pipelinechannel--source_manifest']}}",
        "{{$.inputs.parameters['pipelinechannel--target_manifest']}}"]


def test_training_tasks_request_gpu_shm_tolerations_secrets_retries(spec):
    pipeline, k8s = spec
    executors = pipeline["deploymentSpec"]["executors"]
    gpus_per_task = "{{$.inputs.parameters['pipelinechannel--train_gpus_per_task']}}"
    for task in ["pretrain", "pretrain-2", "adapt", "adapt-2", "distill", "distill-2", "cache-teacher-shard"]:
        label = _executor(spec, task)
        resources = executors[label]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        # training tasks: the gpus_per_task parameter; a cache shard slice: one GPU
        expected = "1" if task == "cache-teacher-shard" else gpus_per_task
        assert resources["accelerator"]["resourceCount"] == expected, task
        assert resources["memoryLimit"] > 0 and resources["cpuLimit"] > 0
        platform = k8s[label]
        assert platform["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                              "sizeLimit": "16Gi"}]
        assert platform["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        secrets = {s["secretName"] for s in platform["secretAsEnv"]}
        assert secrets == {"dakd-s3", "dakd-mlflow"}
        assert _find_task(pipeline, task)["retryPolicy"]["maxRetryCount"] == 2


def test_cache_index_runs_on_cpu_and_is_retried_without_gpu(spec):
    """The fan-in merges shard indices: no GPU, no GPU node selector or toleration."""
    pipeline, k8s = spec
    label = _executor(spec, "cache-teacher-index")
    container = pipeline["deploymentSpec"]["executors"][label]["container"]
    assert "accelerator" not in container["resources"]
    assert container["image"].endswith("-cpu")
    assert "nodeSelector" not in k8s[label] and "tolerations" not in k8s[label]
    assert _find_task(pipeline, "cache-teacher-index")["retryPolicy"]["maxRetryCount"] == 2
    # start (where configuration errors are caught) is never retried
    assert "retryPolicy" not in _find_task(pipeline, "start")


def test_every_parameter_is_described_from_its_config_field_with_its_choices(spec):
    from typing import Literal, get_args, get_origin

    from dakd_core.orchestration.params import PipelineParams

    pipeline, _ = spec
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(PipelineParams.model_fields)
    for name, info in PipelineParams.model_fields.items():
        text = params[name].get("description", "")
        assert info.description and text.startswith(info.description), name
        if get_origin(info.annotation) is Literal:
            assert text.endswith(f"(one of: {', '.join(map(str, get_args(info.annotation)))})"), name
        else:
            assert text == info.description, name
    assert params["distill_paradigm"]["description"].endswith("(one of: a, b, c, d, none)")
    for exposed in ("mlflow_promotion_min_gain", "train_gpus_per_task", "teacher_weights", "student_weights"):
        assert params[exposed]["description"], exposed


def test_choice_parameters_compile_to_drop_down_lists(spec):
    """A choice parameter's (and a switch's) `literals`: the KFP UI's run form shows a drop-down list
    of them (not a free-text box) and the API server refuses other values (kubeflow/pipelines >= 2.16)."""
    pipeline, _ = spec
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    lists = {name: p["literals"] for name, p in params.items() if "literals" in p}
    assert lists == {
        "train_optimizer": ["recipe", "sgd", "adamw"],
        "adapt_method": ["adaptsegnet", "advent", "road", "diga", "sfda"],
        "distill_paradigm": ["a", "b", "c", "d", "none"],
        "distill_adversarial_method": ["adaptsegnet", "advent"],
        "distill_kl_reduction": ["class_mean", "class_sum"],
        "distill_seg_loss": ["ce", "border_focal"],
        "eval_table_classes": [19, 16, 13],
        "distill_teacher_online": [False, True],  # a switch: a list, not a text box holding "false"
    }
    for name, choices in lists.items():
        assert params[name]["defaultValue"] in choices, name  # the form opens on a listed value


def test_pipeline_signature_is_exactly_the_parameters_model():
    import inspect

    from dakd_core.orchestration.params import PipelineParams, form_type, form_values
    from pipelines.dakd_pipeline import dakd_pipeline

    signature = inspect.signature(dakd_pipeline.pipeline_func)
    assert list(signature.parameters) == list(PipelineParams.model_fields)
    defaults = form_values(PipelineParams())
    for name, p in signature.parameters.items():
        assert (p.default, p.annotation) == (defaults[name], form_type(name)), name
    # a number-or-word parameter is text in the form; a plain number keeps its type
    assert (signature.parameters["train_lr"].annotation, signature.parameters["distill_lambda_kl"].annotation,
            signature.parameters["distill_teacher_online"].annotation) == (str, float, bool)


def test_stage_tasks_get_one_settings_string_per_stage_not_the_parameters(spec):
    """One parameter, one place: a loss weight reaches distill inside its settings JSON from
    start, never as a task input of its own."""
    from dakd_core.orchestration.plan import STAGES

    pipeline, _ = spec
    outputs = pipeline["components"]["comp-start"]["outputDefinitions"]["parameters"]
    assert set(outputs) == {"run_name", "parent_run_id", *STAGES}
    for task in ["pretrain", "adapt", "distill", "distill-2", "export", "evaluate", "register", "promote"]:
        inputs = _find_task(pipeline, task)["inputs"]["parameters"]
        assert "config" in inputs, task
        # from start: directly, or inside the paradigm-d branch as the branch's input of start's output
        source = inputs["config"].get("taskOutputParameter", {}).get("producerTask") or \
            inputs["config"]["componentInputParameter"].split("-")[2]
        assert source == "start", task
        assert not {"lambda_kl", "paradigm", "lr", "min_gain", "resolution"} & set(inputs), task


# A value that differs between two runs of the same parameters. Cached tasks must see none of them.
RUN_SCOPED = ("run_name", "parent_run_id", "kfp_run_id", "{{$.pipeline_job_uuid}}", "{{$.pipeline_job_name}}",
              "pipeline_job_resource_name")


def _inputs_of_cached_tasks(pipeline):
    for comp in [pipeline["root"], *pipeline["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if task.get("cachingOptions", {}).get("enableCache"):
                yield name, task


def test_cached_tasks_take_no_run_scoped_value(spec):
    """A rerun that changes only `paradigm` hits the cache up to the teacher cache: no job uuid,
    no MLflow parent run id, no run name among the cached tasks' inputs, and none of their
    inputs is an output of the uncached start task other than a stage's settings."""
    pipeline, _ = spec
    cached = dict(_inputs_of_cached_tasks(pipeline))
    assert {"pretrain", "pretrain-2", "adapt", "adapt-2", "cache-teacher-shard", "cache-teacher-index",
            "distill", "export", "evaluate"} <= set(cached)
    for name, task in cached.items():
        text = json.dumps(task["inputs"])
        for scoped in RUN_SCOPED:
            assert scoped not in text, (name, scoped)
        for key, value in task["inputs"].get("parameters", {}).items():
            producer = value.get("taskOutputParameter", {})
            if producer.get("producerTask") == "start":
                assert producer["outputParameterKey"] not in ("run_name", "parent_run_id"), (name, key)
    # the run-scoped values go to the uncached tasks only
    for task in ("register", "promote", "ingest"):
        assert not _find_task(pipeline, task)["cachingOptions"].get("enableCache")
        assert "run_name" in _find_task(pipeline, task)["inputs"]["parameters"]
    # the sub-pipeline's inputs as the root passes them: no run-scoped value either
    fanout = json.dumps(_find_task(pipeline, "cache-teacher")["inputs"])
    assert not [s for s in RUN_SCOPED if s in fanout]


def test_paradigm_reaches_the_cached_stages_only_through_the_distill_settings():
    """Changing only `paradigm` changes the distill/register settings, not what pretrain, adapt
    or the teacher cache get: those cache keys stay equal. From c to d even the first distill
    stage (d trains c first) is the same."""
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan

    c, d = build_plan(PipelineParams(distill_paradigm="c")), build_plan(PipelineParams(distill_paradigm="d"))
    same = {k for k in c if c[k] == d[k]}
    assert same == {"pretrain_teacher", "pretrain_student", "adapt_teacher", "adapt_student", "cache_teacher",
                    "distill_first", "export", "evaluate", "promote"}
    b = build_plan(PipelineParams(distill_paradigm="b"))
    assert b["distill_first"]["paradigm"] == "b" and b["cache_teacher"] == d["cache_teacher"]
    assert c["distill_second"] == {} and d["distill_second"]["paradigm"] == "d"


def test_caching_off_for_impure_tasks(spec):
    pipeline, _ = spec
    for task in ["start", "ingest", "ingest-2", "register", "promote"]:
        assert _find_task(pipeline, task)["cachingOptions"] == {}, task  # {} = enable_cache false
    assert _find_task(pipeline, "pretrain")["cachingOptions"] == {"enableCache": True}


def test_no_credentials_or_local_paths_in_the_yaml():
    text = COMMITTED.read_text()
    assert "AWS_SECRET_ACCESS_KEY" in text  # only as a secret key name mapped to env
    for bad in ("/work/", "sqlite:", "testing-secret", "password:"):
        assert bad not in text


# --------------------------------------------------------------------------------- local run


def test_dakd_run_end_to_end_tiny(tmp_path):
    """The SAME pipeline through kfp.local: tiny images, deeplabv2_tiny for both nets, 2 iterations.
    The terminal gets progress and the table only; kfp.local's output goes to the run's log."""
    import re

    from pipelines.dakd_pipeline import CACHE_SHARDS

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "params": {"teacher_model": "deeplabv2_tiny", "student_model": "deeplabv2_tiny",
                   "train_source_resize_h": 32, "train_source_resize_w": 64, "train_target_resize_h": 32,
                   "train_target_resize_w": 64, "train_crop_h": 32, "train_crop_w": 64, "pretrain_iterations": 2,
                   "adapt_iterations": 2, "distill_iterations": 2, "teacher_batch_size": 2,
                   "student_batch_size": 2, "train_eval_every": 2, "train_num_workers": 0,
                   "distill_paradigm": "d", "eval_resize_h": 32, "eval_resize_w": 64,
                   "mlflow_experiment": "dakd-e2e"},
        "local": {"synth_train": 4, "synth_val": 2, "synth_width": 64, "synth_height": 32},
    }))
    out = tmp_path / "out"
    env = _clean_env(OMP_NUM_THREADS="1", DAKD_NO_PROGRESS="1")
    for name in ("MLFLOW_TRACKING_URI", "DAKD_MLFLOW_ARTIFACT_ROOT", "MLFLOW_ARTIFACT_ROOT"):
        env.pop(name, None)  # the run's own sqlite database, which the assertions below open
    res = subprocess.run([*DAKD, "run", "--config", str(cfg), "--out", str(out), "--run-name", "e2e"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    terminal = res.stdout.splitlines() + res.stderr.splitlines()
    assert len(terminal) <= 80, res.stdout + res.stderr
    assert not [line for line in terminal if line.lstrip().startswith(("{", '"'))], res.stdout + res.stderr
    for noise in ("executor_output", "Executing task", "Warning", "KFP Executor"):
        assert noise not in res.stdout + res.stderr, noise

    # one progress line per task, counted against the number of tasks the pipeline has
    total = 15 + CACHE_SHARDS
    progress = re.findall(r"^\[\s*(\d+)/(\d+)\] (.+) done in (\d+\.\d) s$", res.stdout, re.M)
    assert [int(k) for k, *_ in progress] == list(range(1, total + 1)), res.stdout
    assert {int(n) for _, n, *_ in progress} == {total}
    names = [name for _, _, name, _ in progress]
    assert names.count("cache-teacher shard") == CACHE_SHARDS
    assert {"start: MLflow parent run", "pretrain teacher", "adapt student", "distill (d) from (c)", "evaluate",
            "promote", "finish"} <= set(names)

    log = out / "logs" / "e2e.log"
    stdout = res.stdout.splitlines()
    assert str(log) in stdout[1] and stdout[-1] == f"log: {log}"
    text = log.read_text()
    for task_output in ("executor_output", "Executing task 'pretrain-2'", "KFP Executor", "UserWarning"):
        assert task_output in text.replace("\x1b[96m", "").replace("\x1b[0m", ""), task_output

    table = res.stdout[res.stdout.index("dakd run e2e:", res.stdout.index("done in")):]
    results = json.loads((out / "results.json").read_text())
    assert f"results: {out / 'results.json'}" in table
    assert set(results) == {"rows", "wall_seconds", "run_name", "registry"}
    assert results["run_name"] == "e2e" and results["wall_seconds"] > 0
    assert results["registry"]["decision"] == "promoted" and str(results["registry"]["challenger"]) == "1"
    rows = {"teacher_source_only": "teacher source-only", "teacher_adapted": "teacher adapted",
            "student_source_only": "student source-only", "student_adapted": "student adapted",
            "student_distilled": "student distilled", "student_exported": "student exported ONNX FP16"}
    assert set(results["rows"]) == set(rows)
    for key, label in rows.items():
        row = results["rows"][key]
        assert set(row) == {"miou", "num_parameters", "latency_ms"}
        assert 0.0 <= row["miou"] <= 1.0 and row["num_parameters"] > 0 and row["latency_ms"] > 0
        # the same numbers as the table: mIoU % there, a fraction here
        assert f"| {label:<30} | {100 * row['miou']:>7.2f} | {row['num_parameters']:>10} |" in table, (key, table)
    assert "registry: dakd-gta5-to-cityscapes v1 promoted" in table
    assert f"MLflow: sqlite:///{out / 'mlflow.db'} (default;" in table
    assert "orchestration overhead" in table
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("dakd-gta5-to-cityscapes", "champion").version) == "1"
    parent = client.search_runs([client.get_experiment_by_name("dakd-e2e").experiment_id],
                                filter_string="tags.`dakd.pipeline_parent` = 'true'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    # named by `dakd run --run-name` (the pipeline has no run-name parameter)
    assert parent[0].info.run_name == "pipeline-e2e" and parent[0].data.params["distill_paradigm"] == "d"
    # the cached stages' runs are linked to the parent run by tags (register sets them)
    tags = parent[0].data.tags
    for stage in ("pretrain_teacher", "pretrain_student", "adapt_teacher", "adapt_student", "distill_first",
                  "export", "evaluate"):
        assert "/stages/" in tags[f"dakd.stage.{stage}"], stage
        for run_id in tags[f"dakd.stage_run.{stage}"].split(","):
            assert client.get_run(run_id).data.tags["dakd.stage_output"] in tags[f"dakd.stage.{stage}"], stage


def _local_result(tmp_path, tracking_uri: str, from_env: bool):
    from dakd_core.orchestration.local import TABLE_ROWS, LocalRunResult

    models = {key: {"miou": 0.1 * (i + 1), "num_parameters": 1000 + i, "throughput_mpx_s": 2.048}
              for i, (key, _, _) in enumerate(TABLE_ROWS)}
    promotion = {"name": "m", "challenger": "2", "decision": "kept", "champion": "1", "reason": "worse"}
    return LocalRunResult("r1", (tmp_path / "store").as_uri(), tracking_uri, from_env, str(tmp_path / "logs/r1.log"),
                          str(tmp_path / "results.json"), models, (32, 64), promotion, 12.5, {"pretrain": 4.0}, 19)


def test_dakd_run_tracking_uri_from_environment_else_local_sqlite_never_showing_credentials(tmp_path, monkeypatch):
    from dakd_core.orchestration.local import format_summary, tracking_uri_for

    monkeypatch.chdir(tmp_path)  # a path under the working directory must stay readable
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri_for(tmp_path / "out") == (f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "  ")
    assert tracking_uri_for(tmp_path / "out") == (f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", False)
    server = "postgresql://dakd:pa/ss%40w0rd@db.example:5432/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert tracking_uri_for(tmp_path / "out") == (server, True)

    summary = format_summary(_local_result(tmp_path, server, True))
    assert "MLflow: postgresql://***@db.example:5432/mlflow (from MLFLOW_TRACKING_URI)" in summary
    assert "pa/ss" not in summary and "w0rd" not in summary and "dakd:" not in summary
    local_db = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert f"MLflow: {local_db} (default;" in format_summary(_local_result(tmp_path, local_db, False))


def test_credential_mask_keeps_paths_and_hosts():
    from dakd_core.orchestration.run_output import mask_credentials

    assert mask_credentials("https://user:tok3n@mlflow.example/api, then s3://bucket/k@v") == \
        "https://***@mlflow.example/api, then s3://bucket/k@v"
    assert mask_credentials("http://mlflow:5000 and sqlite:////tmp/run/mlflow.db") == \
        "http://mlflow:5000 and sqlite:////tmp/run/mlflow.db"


def test_results_document_has_the_six_rows_as_fractions(tmp_path):
    from dakd_core.orchestration.local import results_document

    doc = results_document(_local_result(tmp_path, "sqlite:///x.db", False))
    assert list(doc["rows"]) == ["teacher_source_only", "teacher_adapted", "student_source_only",
                                 "student_adapted", "student_distilled", "student_exported"]
    # 32x64 px = 0.002048 Mpx at 2.048 Mpx/s: 1 ms per image
    assert doc["rows"]["student_exported"] == {"miou": pytest.approx(0.6), "num_parameters": 1005,
                                               "latency_ms": pytest.approx(1.0)}
    assert doc["wall_seconds"] == 12.5 and doc["run_name"] == "r1" and doc["registry"]["decision"] == "kept"


def test_run_output_goes_to_the_log_and_only_our_lines_to_the_terminal(tmp_path, capfd):
    from dakd_core.orchestration.run_output import output_to_log

    log = tmp_path / "logs" / "r.log"
    with output_to_log(log) as terminal:
        print("python print")
        os.write(2, b"fd 2 write\n")
        print("sys.stderr print", file=sys.stderr)  # where `warnings` write
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"],
                       check=True)
        terminal.write("[1/1] ours\n")
    print("after")
    captured = capfd.readouterr()
    assert captured.out == "[1/1] ours\nafter\n" and captured.err == ""
    text = log.read_text()
    for line in ("python print", "fd 2 write", "sys.stderr print", "child out", "child err"):
        assert line in text
    assert "ours" not in text


def test_task_progress_lines_and_failed_task_tail(tmp_path):
    import io

    from dakd_core.orchestration.run_output import TaskProgress, log_tail

    log = tmp_path / "r.log"
    log.write_text("an earlier run\n12:00:00.000 - INFO - Task 'old' finished with status SUCCESS\n")
    terminal = io.StringIO()
    progress = TaskProgress(log, terminal, 4, {"shard": "cache shard", "train": "train teacher"})
    cyan, reset = "\x1b[96m", "\x1b[0m"
    log.write_text(log.read_text() + "".join([
        f"23:59:58.000 - INFO - Executing task {cyan}'shard'{reset}\n",
        f"23:59:58.500 - INFO - Executing task {cyan}'shard'{reset}\n",
        f"23:59:59.000 - INFO - Task {cyan}'shard'{reset} finished with status SUCCESS\n",
        f"00:00:01.500 - INFO - Task {cyan}'shard'{reset} finished with status SUCCESS\n",  # past midnight
        "00:00:02.000 - INFO - Executing task 'train'\n",
        "    Traceback (most recent call last):\n",
        "    ValueError: boom\n",
        "00:00:05.250 - ERROR - Task 'train' finished with status FAILURE\n",
        "00:00:05.300 - INFO - Executing task 'finish'\n",
        '    {"executor_output": 1}\n',
    ]))
    progress.poll()
    assert terminal.getvalue().splitlines() == [
        "[1/4] cache shard done in 1.0 s",
        "[2/4] cache shard done in 3.0 s",
        "[3/4] train teacher FAILED after 3.2 s",
    ]
    assert progress.failed == ["train"]
    tail = log_tail(log, task="train", lines=3)
    assert tail.splitlines() == ["    Traceback (most recent call last):", "    ValueError: boom",
                                 "00:00:05.250 - ERROR - Task 'train' finished with status FAILURE"]


def test_task_count_and_display_names_from_the_pipeline_spec():
    from dakd_core.orchestration.run_output import pipeline_tasks
    from pipelines.dakd_pipeline import CACHE_SHARDS, dakd_pipeline

    total, names = pipeline_tasks(dakd_pipeline.pipeline_spec)
    # start, 2 ingest, 2 pretrain, 2 adapt, the shards, cache index, distill, one of the two
    # paradigm branches, export, evaluate, register, promote, finish
    assert total == 15 + CACHE_SHARDS
    assert names["pretrain-2"] == "pretrain student" and names["cache-teacher-shard"] == "cache-teacher shard"


def test_typed_artifacts_for_the_ui(spec):
    """Datasets and models leave their tasks as typed artifacts (lineage in the UI), evaluate adds a
    Markdown report (plots inline) and the distilled student's confusion matrix."""
    pipeline, _ = spec
    comps = pipeline["components"]

    def artifacts(comp):
        outs = comps[comp]["outputDefinitions"]["artifacts"]
        return {name: a["artifactType"]["schemaTitle"] for name, a in outs.items()}

    assert artifacts("comp-ingest") == {"metrics": "system.Metrics", "train_dataset": "system.Dataset",
                                        "val_dataset": "system.Dataset"}
    for comp in ("comp-pretrain", "comp-adapt", "comp-distill"):
        assert artifacts(comp) == {"metrics": "system.Metrics", "model": "system.Model"}, comp
    assert artifacts("comp-export")["onnx_model"] == "system.Model"
    assert artifacts("comp-evaluate") == {"metrics": "system.Metrics", "report": "system.Markdown",
                                          "confusion": "system.ClassificationMetrics"}


def _dag_components(pipeline) -> dict:
    return {"root": pipeline["root"], **pipeline["components"]}


def _artifact_source(pipeline, task_name: str, key: str) -> tuple[str, str]:
    """(producer task, output key) of a task's artifact input, followed up through the sub-DAGs
    (condition branches, the cache fan-out and its loop) that hand it down."""
    comps = _dag_components(pipeline)
    parent_of = {task["componentRef"]["name"]: (name, task_name_)
                 for name, comp in comps.items() for task_name_, task in comp.get("dag", {}).get("tasks", {}).items()}
    comp = next(name for name, c in comps.items() if task_name in c.get("dag", {}).get("tasks", {}))
    source = comps[comp]["dag"]["tasks"][task_name]["inputs"]["artifacts"][key]
    while "componentInputArtifact" in source:
        comp, task_name = parent_of[comp]
        source = comps[comp]["dag"]["tasks"][task_name]["inputs"]["artifacts"][source["componentInputArtifact"]]
    out = source["taskOutputArtifact"]
    return out["producerTask"], out["outputArtifactKey"]


def _dag_output_producers(pipeline, comp: str, key: str) -> list[tuple[str, str]]:
    """The container tasks (and their output keys) a DAG output artifact selects from, in order."""
    comps = _dag_components(pipeline)
    found = []
    for selector in comps[comp]["dag"]["outputs"]["artifacts"][key]["artifactSelectors"]:
        sub = comps[comp]["dag"]["tasks"][selector["producerSubtask"]]["componentRef"]["name"]
        if "dag" in comps[sub]:
            found += _dag_output_producers(pipeline, sub, selector["outputArtifactKey"])
        else:
            found.append((selector["producerSubtask"], selector["outputArtifactKey"]))
    return found


def test_checkpoints_arrive_as_the_producing_tasks_model_artifacts(spec):
    """Issue 14 (lineage in the UI): every checkpoint a task consumes is an Input[Model] fed by the
    Model output of the task that trained it, through the cache fan-out and paradigm d's branches
    (a OneOf of the second distill task's Model and the first one's handed on); manifests stay
    pinned-URI parameters (ingest is uncached: see components/ingest.py)."""
    pipeline, _ = spec
    comps = pipeline["components"]

    def model_inputs(task):
        comp = comps[_find_task(pipeline, task)["componentRef"]["name"]]
        return {name: a["artifactType"]["schemaTitle"] for name, a in comp["inputDefinitions"]["artifacts"].items()}

    def role(task):
        return _find_task(pipeline, task)["inputs"]["parameters"]["role"]["runtimeValue"]["constant"]

    assert (role("pretrain"), role("adapt"), role("pretrain-2"), role("adapt-2")) == \
        ("teacher", "teacher", "student", "student")
    assert model_inputs("distill") == {"teacher": "system.Model", "init": "system.Model"}
    assert _artifact_source(pipeline, "distill", "teacher") == ("adapt", "model")  # the adapted teacher
    assert _artifact_source(pipeline, "distill", "init") == ("adapt-2", "model")  # the adapted student
    assert _artifact_source(pipeline, "distill-2", "init") == ("distill", "model")  # d from c
    assert _artifact_source(pipeline, "distill-2", "teacher") == ("adapt", "model")
    for adapt, pretrain in (("adapt", "pretrain"), ("adapt-2", "pretrain-2")):
        assert model_inputs(adapt) == {"init": "system.Model"}
        assert _artifact_source(pipeline, adapt, "init") == (pretrain, "model")
    for task in ("cache-teacher-shard", "cache-teacher-index"):
        assert model_inputs(task) == {"teacher": "system.Model"}
        assert _artifact_source(pipeline, task, "teacher") == ("adapt", "model")
    assert _artifact_source(pipeline, "passthrough", "model") == ("distill", "model")

    # export and evaluate get the distilled student from whichever paradigm branch ran
    distilled = _artifact_source(pipeline, "evaluate", "student_distilled")
    assert _artifact_source(pipeline, "export", "checkpoint") == distilled
    assert _dag_output_producers(pipeline, f"comp-{distilled[0]}", distilled[1]) == \
        [("distill-2", "model"), ("passthrough", "distilled")]
    assert model_inputs("evaluate") == {name: "system.Model" for name in (
        "teacher_source_only", "teacher_adapted", "student_source_only", "student_adapted", "student_distilled",
        "student_onnx_fp16")}
    assert {name: _artifact_source(pipeline, "evaluate", name) for name in (
        "teacher_source_only", "teacher_adapted", "student_source_only", "student_adapted", "student_onnx_fp16")} == {
        "teacher_source_only": ("pretrain", "model"), "teacher_adapted": ("adapt", "model"),
        "student_source_only": ("pretrain-2", "model"), "student_adapted": ("adapt-2", "model"),
        "student_onnx_fp16": ("export", "onnx_model")}

    # caching: a cached task's artifact inputs come from cached tasks only (an uncached producer
    # makes new artifacts in every run, and KFP's cache key holds the input artifacts' identities)
    cached = {name for name, _ in _inputs_of_cached_tasks(pipeline)}
    for task in cached:
        for key in _find_task(pipeline, task)["inputs"].get("artifacts", {}):
            producer, output = _artifact_source(pipeline, task, key)
            if producer.startswith("condition-branches"):
                producers = {name for name, _ in _dag_output_producers(pipeline, f"comp-{producer}", output)}
            else:
                producers = {producer}
            assert producers <= cached, (task, key, producers)
    # ... so no cached task takes ingest's Dataset artifacts: its manifests arrive as parameters
    for task in ("pretrain", "adapt", "cache-teacher-shard", "distill", "export", "evaluate"):
        comp = comps[_find_task(pipeline, task)["componentRef"]["name"]]["inputDefinitions"]
        assert not {a["artifactType"]["schemaTitle"] for a in comp.get("artifacts", {}).values()} - {"system.Model"}
        assert {k for k in comp["parameters"] if k.endswith(("manifest", "manifests"))}, task


def test_local_run_resolves_an_artifact_oneof_from_the_branch_that_ran():
    """kfp.local 2.17.3 refuses a DAG output with one artifact selector per branch; `dakd run`
    resolves it for the run the way kfp.local resolves a parameter OneOf (and the KFP backend both)."""
    from kfp.local import io
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
    from kfp.pipeline_spec import pipeline_spec_pb2

    from dakd_core.orchestration.local_compat import artifact_oneof

    outputs = pipeline_spec_pb2.DagOutputsSpec()
    for branch, key in (("condition-3", "distill-2-model"), ("condition-4", "passthrough-distilled")):
        outputs.artifacts["oneof"].artifact_selectors.add(producer_subtask=branch, output_artifact_key=key)
    store = io.IOStore()
    store.put_task_output("condition-4", "passthrough-distilled", "the first distill's model")
    with pytest.raises(ValueError, match="Expected 1 artifact in ArtifactSelectorSpec"):
        OrchestratorUtils.get_dag_output_artifacts(outputs, store)  # what the patch is for
    with artifact_oneof():
        assert OrchestratorUtils.get_dag_output_artifacts(outputs, store) == {"oneof": "the first distill's model"}
        store.put_task_output("condition-3", "distill-2-model", "the second distill's model")
        with pytest.raises(ValueError, match="'oneof': 2 of its branches produced an artifact"):
            OrchestratorUtils.get_dag_output_artifacts(outputs, store)
    with pytest.raises(ValueError, match="Expected 1 artifact"):  # put back after the run
        OrchestratorUtils.get_dag_output_artifacts(outputs, store)


def test_component_wrappers_read_and_write_the_pinned_uri_of_an_artifact(tmp_path):
    """A stage's Model keeps KFP's own URI (under the pipeline root, which KFP's launcher uploads to
    and downloads from) and carries the pinned store URI in its metadata and file; the consumer
    reads that URI back. Paradigm a-c's branch hands the first distill task's Model on as it is."""
    from kfp.dsl import Model

    from components.distill import passthrough
    from dakd_core.errors import DataError
    from dakd_core.orchestration.tasks.artifacts import PINNED_URI, pinned, publish

    produced = Model(name="model", uri=str(tmp_path / "model"), metadata={})  # kfp.local's: a path
    pinned_uri = "s3://dakd/store/stages/distill/abc/best.pt#sha256=" + "0" * 64
    publish(produced, pinned_uri, network="deeplabv2_tiny", stage="distill", paradigm="c")
    assert produced.uri == str(tmp_path / "model") and produced.metadata == {
        PINNED_URI: pinned_uri, "network": "deeplabv2_tiny", "stage": "distill", "paradigm": "c"}
    assert (tmp_path / "model").read_text() == pinned_uri + "\n"
    assert pinned(produced) == pinned_uri

    handed_on = Model(name="distilled", uri=str(tmp_path / "distilled"), metadata={})
    passthrough.python_func(model=produced, distilled=handed_on)
    assert handed_on.metadata == produced.metadata and pinned(handed_on) == pinned_uri

    with pytest.raises(DataError, match="input artifact 'foreign' has no metadata 'pinned_uri'"):
        pinned(Model(name="foreign", uri="s3://elsewhere/model.pt", metadata={"checkpoint": "x"}))
