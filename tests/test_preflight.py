"""A task that would log to an MLflow store of its own, or write to a store it cannot, fails at its
start naming the variable or URI (dakd_core/orchestration/preflight.py), not after the training:
before, a task container without MLFLOW_TRACKING_URI trained against a database inside itself and
the pipeline failed only at register."""

from __future__ import annotations

import json
import uuid

import pytest

from dakd_core.errors import SetupError


class _Launched(Exception):
    pass


@pytest.fixture
def roots(tmp_path) -> dict:
    for name in ("src", "tgt"):
        (tmp_path / name / "images").mkdir(parents=True)
    return {"data_source_uri": str(tmp_path / "src"), "data_target_uri": (tmp_path / "tgt").as_uri()}


def _start(**params):
    """The start component's own Python function, as its container calls it."""
    from components.start import start

    return start.python_func(params={"mlflow_experiment": "dakd-preflight", **params}, kfp_run_id="job-1",
                             kfp_run_name="guarded")


def _store_keys(store_uri: str) -> list[str]:
    from dakd_core.storage import open_store

    return open_store(store_uri).list("")


def test_a_stage_task_without_mlflow_tracking_uri_fails_before_its_stage(tmp_path, monkeypatch):
    """A cached training task whose container lacks MLFLOW_TRACKING_URI: refused before the stage
    runs, not recorded as a deterministic failure (a retry after the secret is fixed runs); with
    its settings' log_mlflow off it needs no tracking store and runs."""
    from dakd_core.orchestration import launch
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    launched = []

    def run_stage(stage, cfg, gpus_per_task, run):
        launched.append(cfg.log_mlflow)
        raise _Launched

    monkeypatch.setattr(launch, "run_stage", run_stage)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # where MLflow's fallback database would appear
    store = (tmp_path / "store").as_uri()
    settings = build_plan(PipelineParams())["pretrain_teacher"]
    task = dict(store_uri=store, experiment="dakd-test", role="teacher", source_manifest="file:///m/src.parquet")
    with pytest.raises(SetupError, match=r"task pretrain: MLFLOW_TRACKING_URI is not set.*secret dakd-mlflow"):
        pretrain_task(**task, config=json.dumps(settings))
    assert launched == [] and not (tmp_path / "mlruns.db").exists()
    assert not (tmp_path / "store").exists()  # no failure record: nothing written at all
    with pytest.raises(_Launched):
        pretrain_task(**task, config=json.dumps({**settings, "log_mlflow": False}))
    assert launched == [False]


def test_start_without_mlflow_tracking_uri_opens_no_run_of_its_own(roots, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    store = (tmp_path / "store").as_uri()
    with pytest.raises(SetupError, match="task start: MLFLOW_TRACKING_URI is not set"):
        _start(**roots, data_store_uri=store)
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "store").exists()


def test_ingest_fails_when_the_parent_run_is_not_at_its_tracking_uri(tmp_path, monkeypatch, mlflow_uri):
    """Each task with a tracking store of its own (a database inside its container): the parent
    run `start` opened is not where ingest, the next task, looks, so ingest fails before it
    ingests anything; where the stores are one, it ingests."""
    import mlflow

    from dakd_core.data.synth import generate
    from dakd_core.orchestration.tasks.ingest import ingest_task

    generate(tmp_path / "src", "source", 2, size=(64, 32), seed=1, split="train", progress=False)
    starts_store = f"sqlite:///{tmp_path / 'start-container.db'}"
    parent = mlflow.MlflowClient(starts_store).create_run(
        mlflow.MlflowClient(starts_store).create_experiment("dakd-test")).info.run_id
    store = (tmp_path / "store").as_uri()
    task = dict(store_uri=store, run_name="r1", experiment="dakd-test", parent_run_id=parent, kfp_run_id="job-1",
                fmt="gta5", root_uri=str(tmp_path / "src"), domain="source", splits=["train"], workers=1)
    with pytest.raises(SetupError, match=rf"task ingest: the pipeline's MLflow parent run '{parent}' is not at "
                                         rf"MLFLOW_TRACKING_URI={mlflow_uri} .*give every task the same"):
        ingest_task(**task)
    assert not (tmp_path / "store").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", starts_store)
    assert ingest_task(**task)["num_samples"] == {"train": 2}


def test_start_fails_on_a_missing_bucket_of_the_object_store_before_opening_the_run(roots, s3_server, mlflow_uri):
    import mlflow

    missing = f"s3://dakd-missing-{uuid.uuid4().hex[:8]}/store"
    with pytest.raises(SetupError, match=rf"field 'data_store_uri': the store {missing} cannot be written "
                                         r"\(bucket not found.*AWS_ENDPOINT_URL.*secret dakd-s3"):
        _start(**roots, data_store_uri=missing)
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("dakd-preflight") is None


def test_start_fails_on_an_unwritable_mlflow_artifact_store_and_leaves_nothing(roots, s3_store, s3_server,
                                                                                 mlflow_uri, monkeypatch):
    """An experiment whose artifacts go to S3 through MLFLOW_S3_ENDPOINT_URL: a missing bucket fails
    `start`, the first task, naming the location and the variables (before, the first write there
    was a stage's result at the end of its training); no experiment, run or store object is left.
    With the bucket there, start opens the run and its write probe is gone again."""
    import boto3
    import mlflow

    bucket = f"dakd-artifacts-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("DAKD_MLFLOW_ARTIFACT_ROOT", f"s3://{bucket}/mlartifacts")
    with pytest.raises(SetupError, match=rf"MLflow artifact store s3://{bucket}/mlartifacts cannot be written "
                                         rf"\(.*NoSuchBucket.*endpoint {s3_server}\) .*MLFLOW_S3_ENDPOINT_URL"):
        _start(**roots, data_store_uri=s3_store)
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.get_experiment_by_name("dakd-preflight") is None
    assert _store_keys(s3_store) == []
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    out = _start(**roots, data_store_uri=s3_store)
    assert client.get_run(out.parent_run_id).info.status == "RUNNING"
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0 and _store_keys(s3_store) == []


@pytest.mark.parametrize("nested", [False, True], ids=["cached-stage", "under-the-parent-run"])
def test_a_stage_run_checks_its_artifact_store_before_its_block(nested, s3_server, mlflow_uri, monkeypatch):
    """Every stage run checks where its artifacts go when it opens (a training stage: before its
    first step), in its own experiment (cached stages) or the parent run's."""
    import mlflow

    from dakd_core.tracking import stage_run

    missing = f"s3://dakd-missing-{uuid.uuid4().hex[:8]}/mlartifacts"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.create_experiment("dakd-s3-artifacts", artifact_location=missing)
    if nested:
        monkeypatch.setenv("DAKD_PARENT_RUN_ID", client.create_run(experiment).info.run_id)
    ran = []
    with pytest.raises(SetupError, match=rf"MLflow artifact store {missing} cannot be written"):
        with stage_run("pretrain", experiment="dakd-s3-artifacts"):
            ran.append(1)
    assert ran == []
    assert [r for r in client.search_runs([experiment]) if "dakd.stage" in r.data.tags] == []  # no stage run opened


@pytest.fixture
def s3_auth(s3_server):
    """The moto server checks credentials from now on (its IAM knows none of the test's keys: every
    request is refused as a wrong credential); back to accepting any afterwards."""
    import requests

    def reset_auth(count: str) -> None:
        requests.post(f"{s3_server}/moto-api/reset-auth", data=count, timeout=10).raise_for_status()

    reset_auth("0")
    try:
        yield
    finally:
        reset_auth("inf")


@pytest.mark.parametrize("store", ["data", "artifacts"])
def test_start_fails_on_a_wrong_s3_credential_naming_the_store_and_variables(store, roots, tmp_path, s3_server,
                                                                              mlflow_uri, monkeypatch, request):
    """Keys the endpoint does not know: `start` fails naming the store it could not write (the object
    store, or the experiment's artifact store) and the variables, and opens no experiment."""
    import boto3
    import mlflow

    bucket = f"dakd-auth-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    if store == "artifacts":
        monkeypatch.setenv("DAKD_MLFLOW_ARTIFACT_ROOT", f"s3://{bucket}/mlartifacts")
        data_store = (tmp_path / "store").as_uri()
        expected = (rf"MLflow artifact store s3://{bucket}/mlartifacts cannot be written "
                    r"\(.*InvalidAccessKeyId.*MLFLOW_S3_ENDPOINT_URL")
    else:
        data_store = f"s3://{bucket}/store"
        expected = rf"field 'data_store_uri': the store {data_store} cannot be written \(access denied .*InvalidAccessKey"
    request.getfixturevalue("s3_auth")  # after the bucket is made: from here on, every key is a wrong one
    with pytest.raises(SetupError, match=expected + ".*secret dakd-s3"):
        _start(**roots, data_store_uri=data_store)
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("dakd-preflight") is None


def test_a_training_stage_with_an_unwritable_artifact_store_exits_2_before_its_first_step(tmp_path, s3_server,
                                                                                          mlflow_uri, monkeypatch,
                                                                                          capsys):
    """`dakd pretrain` whose experiment keeps its artifacts in a bucket that is not there: one error
    line and exit 2 before the first step, nothing published (before: it trained, published its
    checkpoints and failed uploading result.json, exit 1 with a traceback)."""
    from _train_data import make_split

    from dakd_core.cli import main
    from dakd_core.storage import open_store

    location = f"s3://dakd-missing-{uuid.uuid4().hex[:8]}/mlartifacts"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("DAKD_MLFLOW_ARTIFACT_ROOT", location)
    monkeypatch.setenv("DAKD_SYSTEM_METRICS", "0")
    store = (tmp_path / "store").as_uri()
    src = make_split(store, "src", 2, "source", seed=1)
    out = f"{store}/runs/guarded/pretrain"
    assert main(["pretrain", "--model", "deeplabv2_tiny", "--source-manifest", src, "--out", out, "--crop", "32", "64",
                 "--source-resize", "32", "64", "--batch-size", "2", "--num-workers", "0", "--iterations", "1",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dakd pretrain: error: MLflow artifact store {location} cannot be written (")
    assert err.count("\n") == 1 and "NoSuchBucket" in err
    assert open_store(out).list("") == []  # no checkpoint, no result.json (the released writer lease is hidden)
