"""Shared test fixtures: a real S3 endpoint (moto over HTTP), file stores, an MLflow sqlite URI.

The environment below is set at import time, before any test module imports mlflow/timm/tqdm,
because some libraries read it once when imported.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DAKD_NO_PROGRESS"] = "1"
# Tests must never reach a real AWS account or a developer's profile.
_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_DROPPED_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@pytest.fixture(autouse=True, scope="session")
def _test_environment():
    """Two torch threads: the dev machines have 2 cores shared by parallel jobs."""
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free local port; AWS_* env points boto3 at it for the session.

    Yields the endpoint URL. The storage client cache is reset on entry and exit so no client
    built for another endpoint (or none) is reused.
    """
    from moto.server import ThreadedMotoServer

    from dakd_core import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in _DROPPED_AWS_ENV:
            mp.delenv(name, raising=False)
        for name, value in _FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        storage.reset_client_cache()
        yield endpoint
        storage.reset_client_cache()
    server.stop()


@pytest.fixture
def s3_store(s3_server, monkeypatch) -> str:
    """A fresh bucket on the moto server; returns ``s3://<bucket>/prefix``."""
    import boto3

    # Re-assert the endpoint in case an earlier test's monkeypatch removed it.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"dakd-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefix"


@pytest.fixture
def file_store(tmp_path) -> str:
    """A ``file://`` store URI in a fresh temporary directory."""
    root = tmp_path / "store"
    root.mkdir()
    return root.as_uri()


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> str:
    """An empty, fully migrated MLflow sqlite database, built once per session.

    Creating the schema takes seconds (alembic migrations); copying the finished file is instant.
    """
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlruns.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return str(path)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch, _mlflow_template_db) -> str:
    """A fresh sqlite tracking URI (artifacts beside it in ``tmp_path/mlartifacts``).

    MLFLOW_TRACKING_URI is set for the test; any run a test left open is ended afterwards and
    mlflow's process-global tracking URI is cleared so the next test starts clean.
    """
    import mlflow

    db = tmp_path / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DAKD_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    for name in ("MLFLOW_RUN_ID", "DAKD_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
                 "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
