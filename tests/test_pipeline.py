"""The pipeline: committed YAML up to date, DAG and Kubernetes settings, `dakd submit` against a
fake KFP API server, and one tiny end-to-end `dakd run` through kfp.local."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    for p in ["source_format", "source_uri", "target_format", "target_uri", "teacher_model", "student_model",
              "pretrain_iterations", "student_batch_size", "lambda_kl", "lambda_kl_aux", "lambda_mse",
              "lambda_pseudo", "lambda_target", "temperature", "paradigm", "seed", "store_uri",
              "mlflow_experiment", "registered_model", "adaptation_method"]:
        assert p in params, p
    assert params["paradigm"]["defaultValue"] == "d" and params["lambda_kl"]["defaultValue"] == 0.1


def test_training_tasks_request_gpu_shm_tolerations_secrets_retries(spec):
    pipeline, k8s = spec
    executors = pipeline["deploymentSpec"]["executors"]
    for task in ["pretrain", "pretrain-2", "adapt", "adapt-2", "distill", "cache-teacher-shard"]:
        label = _executor(spec, task)
        resources = executors[label]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["memoryLimit"] > 0 and resources["cpuLimit"] > 0
        platform = k8s[label]
        assert platform["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                              "sizeLimit": "16Gi"}]
        assert platform["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        secrets = {s["secretName"] for s in platform["secretAsEnv"]}
        assert secrets == {"dakd-s3", "dakd-mlflow"}
        assert _find_task(pipeline, task)["retryPolicy"]["maxRetryCount"] == 2


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


# ------------------------------------------------------------------------------------ submit


class _FakeKfp(BaseHTTPRequestHandler):
    requests: list = []

    def _reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, None, dict(self.headers)))
        self._reply({})  # no experiment of that name yet

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.requests.append(("POST", self.path, body, dict(self.headers)))
        if self.path.endswith("/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        else:
            self._reply({"run_id": "run-42", "display_name": body.get("display_name"), "state": "PENDING"})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    _FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _FakeKfp.requests
    server.shutdown()


def test_submit_sends_compiled_spec_and_parameters_without_credentials(fake_kfp, tmp_path, monkeypatch, capsys):
    from dakd_core.cli import main

    host, requests = fake_kfp
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "another-secret")
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("paradigm: c\npretrain_iterations: 500\nlambda_target: 0.5\n")
    assert main(["submit", "--host", host, "--params", str(params), "--experiment", "exp-a", "--run-name", "r1"]) == 0
    assert "submitted run run-42" in capsys.readouterr().out
    runs = [r for r in requests if r[0] == "POST" and r[1].endswith("/runs")]
    assert len(runs) == 1
    body = runs[0][2]
    assert body["display_name"] == "r1" and body["experiment_id"] == "exp-1"
    spec = body["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)  # kfp nests IR + platform spec when a platform spec exists
    assert spec["pipelineInfo"]["name"] == "dakd"
    assert "dshm" in json.dumps(body)  # the Kubernetes platform spec travels with the run
    assert body["runtime_config"]["parameters"] == {"paradigm": "c", "pretrain_iterations": 500, "lambda_target": 0.5}
    everything = json.dumps([r[2] for r in requests]) + json.dumps([r[3] for r in requests])
    assert "very-secret-value" not in everything and "another-secret" not in everything
    experiments = [r for r in requests if r[0] == "POST" and r[1].endswith("/experiments")]
    assert experiments and experiments[0][2]["display_name"] == "exp-a"


def test_submit_rejects_unknown_parameter_before_contacting_the_server(fake_kfp, tmp_path, capsys):
    from dakd_core.cli import main

    host, requests = fake_kfp
    params = tmp_path / "params.yaml"
    params.write_text("paradigm: c\nlamda_kl: 0.4\n")
    assert main(["submit", "--host", host, "--params", str(params)]) == 2
    assert "lamda_kl" in capsys.readouterr().err
    assert requests == []


@pytest.mark.parametrize("bad", ["../other-team", "a/../../x", "a b", ".hidden"])
def test_run_name_that_would_leave_runs_folder_is_refused(bad, fake_kfp, tmp_path, capsys):
    from dakd_core.cli import main
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.tasks.common import run_prefix

    with pytest.raises(ConfigError, match="run_name"):
        run_prefix("s3://dakd/store", bad)
    host, requests = fake_kfp
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run_name": bad}))
    assert main(["submit", "--host", host, "--params", str(params)]) == 2
    assert "run_name" in capsys.readouterr().err and requests == []
    assert run_prefix("s3://dakd/store/", "gta5-to-acdc_v2.1") == "s3://dakd/store/runs/gta5-to-acdc_v2.1"


def test_submit_names_an_unreachable_server(capsys):
    from dakd_core.cli import main

    assert main(["submit", "--host", "http://127.0.0.1:9"]) == 2
    assert "submitting to http://127.0.0.1:9 failed" in capsys.readouterr().err


# --------------------------------------------------------------------------------- local run


def test_dakd_run_end_to_end_tiny(tmp_path):
    """The SAME pipeline through kfp.local: tiny images, deeplabv2_tiny for both nets, 2 iterations."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "params": {"teacher_model": "deeplabv2_tiny", "student_model": "deeplabv2_tiny",
                   "source_resize_h": 32, "source_resize_w": 64, "target_resize_h": 32, "target_resize_w": 64,
                   "crop_h": 32, "crop_w": 64, "pretrain_iterations": 2, "adapt_iterations": 2,
                   "distill_iterations": 2, "teacher_batch_size": 2, "student_batch_size": 2, "eval_every": 2,
                   "num_workers": 0, "paradigm": "d", "eval_resize_h": 32, "eval_resize_w": 64,
                   "mlflow_experiment": "dakd-e2e"},
        "local": {"synth_train": 4, "synth_val": 2, "synth_width": 64, "synth_height": 32},
    }))
    out = tmp_path / "out"
    env = _clean_env(OMP_NUM_THREADS="1", DAKD_NO_PROGRESS="1")
    res = subprocess.run([*DAKD, "run", "--config", str(cfg), "--out", str(out), "--run-name", "e2e"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = res.stdout[res.stdout.index("dakd run e2e:"):]
    for row in ["teacher source-only", "teacher adapted", "student source-only", "student adapted",
                "student distilled", "student exported ONNX FP16"]:
        assert f"| {row}" in table, table
    assert "registry: dakd-gta5-to-cityscapes v1 promoted" in table
    assert "orchestration overhead" in table
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("dakd-gta5-to-cityscapes", "champion").version) == "1"
    parent = client.search_runs([client.get_experiment_by_name("dakd-e2e").experiment_id],
                                filter_string="tags.`dakd.pipeline_parent` = 'true'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = client.search_runs([parent[0].info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    assert {r.data.tags.get("dakd.kfp_task") for r in children} >= {"pretrain", "adapt", "distill", "evaluate"}
