"""dakd_core.tracking: stage runs nest, carry redacted params and KFP tags, and log to MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import torch
from pydantic import BaseModel

from dakd_core import tracking
from dakd_core.errors import DakdError

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example shape


class _Optim(BaseModel):
    lr: float = 2.5e-4
    momentum: float = 0.9


class _StageConfig(BaseModel):
    model: str = "deeplabv2_tiny"
    optim: _Optim = _Optim()
    crop: tuple[int, int] = (32, 64)
    api_token: str = "tok-123456"
    endpoint: str = "https://alice:hunter22@mlflow.example.com"
    note: str = f"uploaded with {AWS_SECRET}"
    git_sha: str = "0123456789abcdef0123456789abcdef01234567"  # hex: must NOT be redacted


def _client(uri):
    return mlflow.MlflowClient(uri)


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.tracking_uri() == "http://mlflow:5000"
    # Artifact root of new experiments: beside the sqlite DB, never MLflow's ./mlartifacts.
    for name in ("DAKD_MLFLOW_ARTIFACT_ROOT", "MLFLOW_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    assert tracking._artifact_root(f"sqlite:///{tmp_path}/db/m.db") == (tmp_path / "db/mlartifacts").as_uri()
    assert tracking._artifact_root("sqlite:///rel.db") == (tmp_path / "mlartifacts").as_uri()
    assert tracking._artifact_root("http://mlflow:5000") is None
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", "s3://bucket/mlflow/")
    assert tracking._artifact_root("http://mlflow:5000") == "s3://bucket/mlflow"


def test_stage_run_params_tags_metrics(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DAKD_KFP_RUN_ID", "kfp-run-42")
    monkeypatch.setenv("DAKD_KFP_TASK", "distill-c")
    monkeypatch.setenv("DAKD_GIT_COMMIT", "abc1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value-xyz")
    cfg = _StageConfig()
    with tracking.stage_run("distill", cfg, tags={"paradigm": "c",
                                                  "note": "key env-secret-value-xyz"}) as run:
        tracking.log_metrics({"train/loss": 1.5, "select/miou": 0.25}, step=1)
        tracking.log_metrics({"train/loss": 0.5}, step=2)
        tracking.set_tags({"db_password": "pw", "extra": "ok"})
        run_id = run.info.run_id
    client = _client(mlflow_uri)
    data = client.get_run(run_id).data
    params, tags = data.params, data.tags
    assert params["model"] == "deeplabv2_tiny"
    assert float(params["optim.lr"]) == 2.5e-4 and float(params["optim.momentum"]) == 0.9
    assert params["crop"] == "[32, 64]"
    assert params["git_sha"] == cfg.git_sha
    assert params["api_token"] == "***"
    assert params["endpoint"] == "https://***@mlflow.example.com"
    assert params["note"] == "uploaded with ***"
    assert tags["dakd.stage"] == "distill"
    assert tags["dakd.kfp_run_id"] == "kfp-run-42" and tags["dakd.kfp_task"] == "distill-c"
    assert tags["dakd.git_commit"] == "abc1234" == tags["mlflow.source.git.commit"]
    assert tags["dakd.torch"] == torch.__version__  # the build that ran the stage (+cpu here)
    assert tags["paradigm"] == "c" and tags["extra"] == "ok" and tags["db_password"] == "***"
    assert tags["note"] == "key ***"
    recorded = " ".join(list(params.values()) + list(tags.values()))
    for secret in ["tok-123456", "hunter22", AWS_SECRET, "env-secret-value-xyz", "pw "]:
        assert secret not in recorded + " "
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 0.5)]
    assert data.metrics["select/miou"] == 0.25
    assert client.get_run(run_id).info.status == "FINISHED"
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.name == "dakd"
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_nesting_under_parent_from_env(mlflow_uri, monkeypatch):
    parent = _client(mlflow_uri).create_run(tracking.ensure_experiment("pipeline-exp"))
    parent_id = parent.info.run_id
    monkeypatch.setenv("DAKD_PARENT_RUN_ID", parent_id)
    with tracking.stage_run("ingest", {"a": 1}, experiment="ignored-when-nested") as run:
        child_id = run.info.run_id
    child = _client(mlflow_uri).get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.info.experiment_id == parent.info.experiment_id
    assert child.info.run_name == "ingest"


def test_platform_mlflow_run_id_wins_and_survives(mlflow_uri, monkeypatch):
    client = _client(mlflow_uri)
    exp = tracking.ensure_experiment()
    platform, pipeline = client.create_run(exp), client.create_run(exp)
    monkeypatch.setenv("MLFLOW_RUN_ID", platform.info.run_id)
    monkeypatch.setenv("DAKD_PARENT_RUN_ID", pipeline.info.run_id)
    ids = []
    for stage in ("adapt", "distill"):
        with tracking.stage_run(stage) as run:
            ids.append(run.info.run_id)
    assert platform.info.run_id not in ids  # the platform's run was not resumed as a stage run
    for run_id in ids:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == platform.info.run_id
    assert os.environ["MLFLOW_RUN_ID"] == platform.info.run_id


def test_in_process_active_run_is_the_parent(mlflow_uri):
    with tracking.stage_run("pipeline") as outer:
        with tracking.stage_run("score", params={"x": 1}) as inner:
            inner_id = inner.info.run_id
    tags = _client(mlflow_uri).get_run(inner_id).data.tags
    assert tags["mlflow.parentRunId"] == outer.info.run_id


def test_failed_block_marks_run_failed(mlflow_uri):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("export") as run:
            raise RuntimeError("boom")
    assert _client(mlflow_uri).get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_artifacts(mlflow_uri, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    local = tmp_path / "local.txt"
    local.write_text("local file")
    with tracking.stage_run("evaluate") as run:
        tracking.log_text("hello", "notes/hello.txt")
        tracking.log_dict({"miou": 0.5}, "metrics.json")
        tracking.log_bytes(b"\x89PNG-ish", "plots/raw.bin")
        tracking.log_artifact(local, "inputs")
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        tracking.log_figure(fig, "plots/curve.png")
        plt.close(fig)
        with pytest.raises(DakdError, match="missing.txt"):
            tracking.log_artifact(tmp_path / "missing.txt")
        with pytest.raises(DakdError, match="invalid MLflow artifact path"):
            tracking.log_text("x", "../escape.txt")
        with pytest.raises(DakdError, match="'bad'"):
            tracking.log_metrics({"bad": "not-a-number"})
    root = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "dl")))
    assert (root / "notes/hello.txt").read_text() == "hello"
    assert json.loads((root / "metrics.json").read_text()) == {"miou": 0.5}
    assert (root / "plots/raw.bin").read_bytes() == b"\x89PNG-ish"
    assert (root / "inputs/local.txt").read_text() == "local file"
    assert (root / "plots/curve.png").read_bytes()[:4] == b"\x89PNG"


def test_helpers_need_an_active_run(mlflow_uri):
    with pytest.raises(DakdError, match="no active MLflow run"):
        tracking.log_metrics({"a": 1.0})
    with pytest.raises(DakdError, match="no active MLflow run"):
        tracking.set_tags({"a": "b"})


def test_missing_parent_run_is_an_error(mlflow_uri, monkeypatch):
    monkeypatch.setenv("DAKD_PARENT_RUN_ID", "0" * 32)
    with pytest.raises(DakdError, match="0{32}"):
        with tracking.stage_run("ingest"):
            pass


@pytest.mark.parametrize("key,value,expected", [
    ("aws_secret_access_key", "abc", "***"),
    ("mlflowTrackingPassword", "abc", "***"),
    ("api.key", 5, "***"),
    ("credentials.aws", "abc", "***"),
    ("MYSQL_PWD", "abc", "***"),  # MySQL's password variable: 'pwd' after a qualifier
    ("sort_keys", True, "true"),
    ("tokenizer", "bpe", "bpe"),
    ("PWD", "/home/alice/dakd", "/home/alice/dakd"),  # the working directory, not a password
    ("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1", "/tmp/ssh-x/agent.1"),
    ("cache_key", "shard_00001", "shard_00001"),
    ("secret_name", "dakd-s3", "dakd-s3"),  # the name of a Kubernetes secret is no secret
    ("id", "AKIAIOSFODNN7EXAMPLE", "***"),
    ("digest", "DEADBEEF" * 5, "DEADBEEF" * 5),
    ("lr", 0.01, "0.01"),
])
def test_redact(key, value, expected):
    assert tracking.redact(key, value) == expected


# A shell's environment as a pipeline task or a developer's terminal has it, plus real-looking
# credentials. The ordinary variables hold values that prefix or appear inside every path a run
# records; the secret ones must vanish from everything MLflow keeps.
HOME_DIR = "/home/alice"
WORK_DIR = "/home/alice/work/dakd"
ORDINARY_ENV = {
    "PWD": WORK_DIR, "OLDPWD": HOME_DIR, "HOME": HOME_DIR, "USER": "alice", "LOGNAME": "alice",
    "PATH": f"{HOME_DIR}/.local/bin:/usr/local/bin:/usr/bin:/bin", "SHELL": "/bin/bash",
    "SSH_AUTH_SOCK": "/tmp/ssh-XXXXk3j2/agent.4242", "TOKENIZERS_PARALLELISM": "false",
    "AWS_SHARED_CREDENTIALS_FILE": f"{HOME_DIR}/.aws/credentials", "MLFLOW_TRACKING_USERNAME": "alice",
}
SECRET_ENV = {
    "AWS_SECRET_ACCESS_KEY": "q8Vx2LmT/Nw4RzKp9HsY3bGfJ7cD1eUoAiW5tQ6r",
    "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD",
    "MLFLOW_TRACKING_PASSWORD": "Tr0ub4dor&3-mlflow",
    "MLFLOW_TRACKING_TOKEN": "dapi5f3e9a1c7b2d4e6f8a0b",
    "HF_TOKEN": "hf_kXyZqWeRtYuIoPaSdFgHjKl",
    "DB_PASSWORD": "s3cr3t-pg-pass",
}


def test_realistic_environment_masks_secrets_and_keeps_paths(mlflow_uri, tmp_path, monkeypatch):
    """Paths under $PWD and $HOME are recorded intact (they were `file://***_out/store/...` when
    `pwd` counted as a secret word); every secret value is masked in params, tags and logged text."""
    for name, value in {**ORDINARY_ENV, **SECRET_ENV}.items():
        monkeypatch.setenv(name, value)
    store = f"file://{WORK_DIR}/demo_out/store"
    checkpoint = f"{store}/runs/local-20250101-120000/pretrain_teacher/best.pt"
    aws, pg, hf = SECRET_ENV["AWS_SECRET_ACCESS_KEY"], SECRET_ENV["DB_PASSWORD"], SECRET_ENV["HF_TOKEN"]
    config = {
        "out": f"{store}/runs/local-20250101-120000/pretrain_teacher",
        "source_manifest": f"{store}/datasets/gta5-source-1a2b3c4d/train/manifest.parquet",
        "cache_dir": f"{HOME_DIR}/.cache/dakd",
        "database": f"postgresql://alice:{pg}@db.internal:5432/mlflow",
        "note": f"token {hf} pasted by mistake",
        "presigned": f"https://bucket.s3.amazonaws.com/x.pt?X-Amz-Credential=AKID&X-Amz-Signature=abc123def&part=2",
    }
    text = f"checkpoint {checkpoint}\nenv AWS_SECRET_ACCESS_KEY={aws}\nPATH={ORDINARY_ENV['PATH']}\n"
    with tracking.stage_run("pretrain", config, tags={"dakd.best_checkpoint": checkpoint,
                                                      "upload": f"s3 key {aws}"}) as run:
        tracking.set_tags({"cwd": WORK_DIR, "user": "alice"})
        tracking.log_text(text, "notes/run.txt")
        tracking.log_dict({"checkpoint": checkpoint, "aws_secret_access_key": "inline-secret-value",
                           "nested": [{"auth": f"Bearer {SECRET_ENV['MLFLOW_TRACKING_TOKEN']}"}]}, "summary.json")
        tracking.log_bytes(f"# report\nmodel {checkpoint} password {pg}\n".encode(), "report.md")
        run_id = run.info.run_id
    data = _client(mlflow_uri).get_run(run_id).data
    params, tags = data.params, data.tags
    # paths intact, wherever $PWD / $HOME / $USER occur in them
    assert params["out"] == config["out"] and params["source_manifest"] == config["source_manifest"]
    assert params["cache_dir"] == f"{HOME_DIR}/.cache/dakd"
    assert tags["dakd.best_checkpoint"] == checkpoint
    assert tags["cwd"] == WORK_DIR and tags["user"] == "alice"
    # secrets masked, the text around them kept
    assert params["database"] == "postgresql://***@db.internal:5432/mlflow"
    assert params["note"] == "token *** pasted by mistake"
    assert params["presigned"] == ("https://bucket.s3.amazonaws.com/x.pt?X-Amz-Credential=***"
                                   "&X-Amz-Signature=***&part=2")
    assert tags["upload"] == "s3 key ***"
    root = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl")))
    notes = (root / "notes/run.txt").read_text()
    assert notes == (f"checkpoint {checkpoint}\nenv AWS_SECRET_ACCESS_KEY=***\n"
                     f"PATH={ORDINARY_ENV['PATH']}\n")
    summary = json.loads((root / "summary.json").read_text())
    assert summary == {"checkpoint": checkpoint, "aws_secret_access_key": "***",
                       "nested": [{"auth": "Bearer ***"}]}
    assert (root / "report.md").read_text() == f"# report\nmodel {checkpoint} password ***\n"
    recorded = json.dumps([params, tags]) + notes + (root / "summary.json").read_text() + (root / "report.md").read_text()
    for secret in [*SECRET_ENV.values(), "inline-secret-value", "abc123def"]:
        assert secret not in recorded, secret


def test_aws_secret_shape_spares_paths_and_digests():
    """Tokens of the AWS-secret shape (40 base64 characters) are masked, paths and digests of the
    same length are not."""
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert tracking.redact_text(f"key={key}.") == "key=***."
    for ordinary in ["/Users/Alice/Documents/Work/Dakd/Store12",  # an absolute path, 40 characters
                     "runs/local202/pretrain/teacher/ckpt/best",  # a relative one
                     "0123456789abcdef0123456789abcdef01234567"]:  # a git SHA
        assert len(ordinary) == 40
        assert tracking.redact_text(f"uri {ordinary} ok") == f"uri {ordinary} ok"


# ------------------------------------------------------------------ pipeline runs: names, tags, parent


def _fake_stage(module, stage: str):
    """Stands in for a stage entry point (`pretrain.run`, `evaluate.run`, ...) as far as MLflow sees
    it: one `stage_run(stage, params=config)` (what the train loops' RunKeeper and evaluate open),
    its output written under cfg.out."""
    from dakd_core.storage import open_store

    def run(cfg):
        with tracking.stage_run(stage, params=cfg.model_dump(mode="json")) as active:
            out = open_store(cfg.out)
            if stage == "evaluate":
                metrics = {"models": {name.split("=", 1)[0]: {"miou": miou} for name, miou in
                                      zip(cfg.models, [0.30, 0.40, 0.20, 0.25, 0.33, 0.32])}}
                from dakd_core.evaluation.evaluate import EvalResult

                return EvalResult(out.put_bytes("metrics.json", json.dumps(metrics).encode()),
                                  out.put_bytes("report.md", b"# report"), metrics)
            from dakd_core.train.engine import TrainResult

            uri = out.put_bytes("best.pt", stage.encode())
            return TrainResult(uri, uri, {"miou": 0.1}, active.info.run_id)

    return run


def test_pipeline_runs_are_named_by_role_and_the_parent_carries_params_and_headline(mlflow_uri, tmp_path, monkeypatch):
    """The tasks of one pipeline run, as components call them (stage entry points replaced by
    `_fake_stage`): stage runs are `<stage>-<role>` with role/method/paradigm tags and their
    content-addressed output folder; they take no per-run value (KFP caches them), so the
    uncached register task links them to the parent run by tags. The parent run holds every
    pipeline parameter, the headline metrics and the promotion."""
    from dakd_core.evaluation import evaluate
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.tasks.adapt import adapt_task
    from dakd_core.orchestration.tasks.distill import distill_task
    from dakd_core.orchestration.tasks.evaluate import ROWS, evaluate_task
    from dakd_core.orchestration.tasks.pretrain import pretrain_task
    from dakd_core.orchestration.tasks.register import link_stage_runs, promote_task
    from dakd_core.orchestration.tasks.start import start_task
    from dakd_core.train import adapt, distill, pretrain

    monkeypatch.setenv("DAKD_SYSTEM_METRICS", "0")  # each run would wait for its sampler thread
    for module, stage in ((pretrain, "pretrain"), (adapt, "adapt"), (distill, "distill"), (evaluate, "evaluate")):
        monkeypatch.setattr(module, "run", _fake_stage(module, stage))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x").write_text("x")
    params = PipelineParams(data_source_format="gta5", data_target_format="cityscapes", distill_paradigm="d",
                            mlflow_experiment="dakd-e", teacher_model="deeplabv2_tiny", adapt_method="advent",
                            data_source_uri=str(tmp_path / "src"), data_target_uri=str(tmp_path / "src"),
                            data_store_uri=(tmp_path / "store").as_uri()).model_dump()  # start checks it takes a write
    # as KFP hands the dict to the start task: every value substituted as text, integers as floats
    delivered = {k: json.dumps(v) if isinstance(v, bool) else str(float(v)) if type(v) is int else str(v)
                 for k, v in params.items()}
    start = start_task(params=delivered, kfp_run_id="job-7", kfp_run_name="r1")
    parent_id = start["parent_run_id"]
    common = dict(store_uri=(tmp_path / "store").as_uri(), experiment="dakd-e")
    data = dict(source_manifest="file:///data/src.parquet")
    adversarial = dict(target_manifest="file:///data/tgt.parquet", **data)
    ckpt = {role: pretrain_task(**common, role=role, config=start[f"pretrain_{role}"], **data)["checkpoint"]
            for role in ("teacher", "student")}
    adapted = adapt_task(**common, role="teacher", config=start["adapt_teacher"], init=ckpt["teacher"], **adversarial)
    distill_args = dict(teacher=adapted["checkpoint"], cache_index="file:///cache/index.parquet", **adversarial)
    first = distill_task(**common, config=start["distill_first"], init=ckpt["student"], **distill_args)
    second = distill_task(**common, config=start["distill_second"], init=first["checkpoint"], **distill_args)
    evaluated = evaluate_task(**common, config=start["evaluate"], models={row: ckpt["student"] for row in ROWS},
                              val_manifest="file:///data/val.parquet")

    client = _client(mlflow_uri)
    experiment = client.get_run(parent_id).info.experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment], filter_string="tags.`dakd.stage` != ''")}
    assert set(runs) == {"pretrain-teacher", "pretrain-student", "adapt-teacher", "distill-student-c",
                         "distill-student-d", "evaluate"}
    tags = {name: run.data.tags for name, run in runs.items()}
    for name in runs:
        assert "mlflow.parentRunId" not in tags[name], name  # a cached task never sees the parent's id
        assert tags[name]["dakd.stage"] == name.split("-")[0]
        assert f"/stages/{name.split('-')[0]}/" in tags[name]["dakd.stage_output"], name
    assert (tags["pretrain-teacher"]["dakd.role"], tags["pretrain-teacher"]["dakd.method"]) == ("teacher", "source-only")
    assert tags["pretrain-student"]["dakd.role"] == "student"
    assert (tags["adapt-teacher"]["dakd.role"], tags["adapt-teacher"]["dakd.method"]) == ("teacher", "advent")
    for paradigm in "cd":
        t = tags[f"distill-student-{paradigm}"]
        assert (t["dakd.role"], t["dakd.method"], t["dakd.paradigm"]) == ("student", "dakd", paradigm)
        assert t["dakd.adversarial_method"] == "adaptsegnet"
    assert "dakd.role" not in tags["evaluate"]  # no label or role left over from earlier tasks

    # register's linkage, as the uncached task runs it: inside the parent run's context
    from dakd_core.orchestration.context import task_context

    with task_context("job-7", "register", parent_id, "dakd-e"):
        linked = link_stage_runs({"pretrain_teacher": ckpt["teacher"], "distill_second": second["checkpoint"]})
    assert linked["dakd.stage_run.pretrain_teacher"] == runs["pretrain-teacher"].info.run_id
    assert linked["dakd.stage_run.distill_second"] == runs["distill-student-d"].info.run_id
    parent = client.get_run(parent_id).data
    assert parent.tags["dakd.stage.pretrain_teacher"] == ckpt["teacher"].split("#")[0]

    assert set(parent.params) == set(PipelineParams.model_fields)
    assert parent.params["train_crop_h"] == "512" and parent.params["train_lr"] == "recipe"  # the networks' recipes
    assert parent.params["distill_teacher_online"] == "false"
    assert parent.params["data_source_uri"] == params["data_source_uri"]
    assert parent.tags["dakd.dataset_pair"] == "gta5->cityscapes" and parent.tags["dakd.paradigm"] == "d"
    assert evaluated["miou"]["student distilled"] == pytest.approx(0.33)

    # the promotion decision reaches the parent run too
    from dakd_core.registry import TAG_MANIFEST

    source = (tmp_path / "artifact").as_uri()
    client.create_registered_model("dakd-gta5-to-cityscapes")
    version = client.create_model_version("dakd-gta5-to-cityscapes", source=source,
                                          tags={"miou": "0.33", TAG_MANIFEST: "aaa"}).version
    promote_task(**common, run_name="r1", kfp_run_id="job-7", parent_run_id=parent_id, name="dakd-gta5-to-cityscapes",
                 version=str(version))
    parent = client.get_run(parent_id).data
    assert parent.tags["dakd.promotion"] == "promoted" and parent.tags["dakd.champion"] == str(version)
    assert parent.tags["dakd.registered_version"] == f"dakd-gta5-to-cityscapes/{version}"


# ------------------------------------------------------------------------ system metrics


def _nvml_gpu() -> str | None:
    """Why NVML cannot report a GPU here (None: it can)."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (the CUDA image has it: requirements/cuda.txt)"
    try:
        pynvml.nvmlInit()
        return None if pynvml.nvmlDeviceGetCount() > 0 else "NVML finds no GPU"
    except pynvml.NVMLError as e:
        return f"NVML: {e}"


def _system_metrics_run(monkeypatch, seconds: float) -> dict:
    """The metrics of a stage run that lasted `seconds`, MLflow sampling every 0.2 s."""
    import time

    monkeypatch.delenv("DAKD_SYSTEM_METRICS", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with tracking.stage_run("pretrain") as run:
        time.sleep(seconds)
    return mlflow.MlflowClient().get_run(run.info.run_id).data.metrics


def test_stage_runs_log_system_metrics(mlflow_uri, monkeypatch):
    metrics = _system_metrics_run(monkeypatch, 1.0)
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics and metrics[key] >= 0, key
    monkeypatch.setenv("DAKD_SYSTEM_METRICS", "0")
    with tracking.stage_run("pretrain") as run:
        pass
    assert not [k for k in mlflow.MlflowClient().get_run(run.info.run_id).data.metrics if k.startswith("system/")]


def test_stage_runs_log_gpu_metrics_where_nvml_sees_a_gpu(mlflow_uri, monkeypatch):
    if (reason := _nvml_gpu()) is not None:
        pytest.skip(reason)
    metrics = _system_metrics_run(monkeypatch, 1.0)
    assert 0 <= metrics["system/gpu_0_utilization_percentage"] <= 100
    assert metrics["system/gpu_0_memory_usage_megabytes"] > 0


def test_cuda_image_installs_nvidia_ml_py_pinned():
    """GPU system metrics come from MLflow importing pynvml: the CUDA image installs the exact
    pin of requirements/cuda.txt and imports pynvml at build time; the CPU image does not."""
    import re

    root = Path(__file__).resolve().parents[1]
    pins = [line.split("#")[0].strip() for line in (root / "requirements" / "cuda.txt").read_text().splitlines()]
    nvml = [p for p in pins if p.startswith("nvidia-ml-py")]
    assert len(nvml) == 1 and re.fullmatch(r"nvidia-ml-py==\d+(\.\d+)+", nvml[0]), nvml
    cuda, cpu = ((root / "docker" / f"Dockerfile.{v}").read_text() for v in ("cuda", "cpu"))
    assert re.search(r"pip install -c requirements/constraints\.txt -r requirements/runtime\.txt -r requirements/cuda\.txt", cuda)
    assert re.search(r"python -c \"import [^\"]*\bpynvml\b", cuda)
    assert "cuda.txt" not in cpu
