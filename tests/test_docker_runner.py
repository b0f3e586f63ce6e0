"""`dakd run --runner docker` without a docker engine: what each task's container is started with,
through kfp.local's own DockerTaskHandler and a recording fake of the docker SDK client. A task
that got only its own variables would track to a throwaway MLflow store inside its container and
write its outputs nowhere the next task reads: these tests fail then."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from dakd_core.errors import ConfigError, DakdError
from dakd_core.orchestration import docker_runner
from dakd_core.orchestration.docker_runner import DockerTasks, container_environment, mount_point, mounts

ROOT = Path(__file__).resolve().parents[1]


class FakeContainer:
    def __init__(self, status: int, log: list):
        self.status, self.log = status, log

    def logs(self, stream, follow):
        return iter([b"task output\n"])

    def wait(self):
        return {"StatusCode": self.status}

    def remove(self, force):
        self.log.append(("remove", force))


class FakeClient:
    """Records containers.run; `images` lists what is on the machine."""

    def __init__(self, images=("dakd-test/dakd:t-cpu",), status=0):
        self.log, self.status, self.present = [], status, set(images)
        client = self

        class Images:
            def get(self, name):
                if name not in client.present:
                    raise docker.errors.ImageNotFound(name)
                return name

            def list(self):
                raise AssertionError("kfp.local's own image lookup/pull must not run")

        class Containers:
            def run(self, **kw):
                client.log.append(("run", kw))
                return FakeContainer(client.status, client.log)

        self.images, self.containers = Images(), Containers()

    def info(self):
        return {"SecurityOptions": []}

    def close(self):
        pass


HOST_ENV = {
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_TRACKING_PASSWORD": "pw",
    "DAKD_TIMINGS_URI": "s3://b/runs/r/timings", "DAKD_NO_PROGRESS": "0",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_SECRET_ACCESS_KEY": "k",
    "PATH": "/host/venv/bin:/usr/bin", "HOME": "/root", "GITHUB_TOKEN": "not for tasks", "OMP_NUM_THREADS": "1",
}


def test_container_environment_merges_the_runs_settings_under_the_tasks_own():
    env = container_environment({"DAKD_NO_PROGRESS": "1", "KFP_TASK_VAR": "x"}, HOST_ENV)
    assert env == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_TRACKING_PASSWORD": "pw",
        "DAKD_TIMINGS_URI": "s3://b/runs/r/timings", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_SECRET_ACCESS_KEY": "k", "OMP_NUM_THREADS": "1",
        "DAKD_NO_PROGRESS": "1",  # the task's own value wins
        "KFP_TASK_VAR": "x",
        "HOME": "/tmp",  # the caller's uid has no home in the image; the host's PATH would hide the image's
    }


def test_mount_points_of_the_runs_uris(tmp_path):
    assert mount_point("sqlite:////srv/out/mlflow.db", "MLFLOW_TRACKING_URI") == Path("/srv/out")
    assert mount_point("file:///srv/store", "the store") == Path("/srv/store")
    assert mount_point("/data/gta5", "a dataset root") == Path("/data/gta5")
    for remote in ("s3://b/p", "http://127.0.0.1:5000", "postgresql://db/mlflow", "pvc://claim/x", ""):
        assert mount_point(remote, "x") is None
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI 'sqlite:///mlflow.db' is a relative path"):
        mount_point("sqlite:///mlflow.db", "MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match="a dataset root 'data/source' is a relative path"):
        mount_point("data/source", "a dataset root")
    out = tmp_path / "out"
    volumes = mounts([out, out / "store", tmp_path / "data", out / "."])
    assert volumes == {str(p): {"bind": str(p), "mode": "rw"} for p in (tmp_path / "data", out)}
    assert (tmp_path / "data").is_dir()


def _run_task_through_kfp(monkeypatch, tmp_path, client, tasks: DockerTasks, folders):
    """One task exactly as kfp.local starts it under `dakd run --runner docker`."""
    from kfp.local import docker_task_handler, status

    monkeypatch.setattr(docker, "from_env", lambda: client)
    for name, value in HOST_ENV.items():
        monkeypatch.setenv(name, value)
    with tasks.running(folders):
        handler = docker_task_handler.DockerTaskHandler(
            image="dakd-test/dakd:t-cpu", full_command=["python", "-m", "kfp.dsl.executor_main"],
            pipeline_root=str(tmp_path / "out" / "kfp"), runner=tasks.kfp_runner(),
            env_vars={"DAKD_NO_PROGRESS": "1"})
        result = handler.run()
    # kfp.local's own function is back after the run
    assert docker_task_handler.run_docker_container.__module__ == "kfp.local.docker_task_handler"
    return result == status.Status.SUCCESS


def test_a_task_container_gets_tracking_store_user_mounts_and_host_network(monkeypatch, tmp_path):
    client = FakeClient()
    tasks = DockerTasks(environ={"DAKD_CPU_IMAGE": "dakd-test/dakd:t-cpu"}, client=client)
    out = tmp_path / "out"
    folders = tasks.host_folders(out, "s3://b/store", f"sqlite:///{tmp_path}/db/mlflow.db", [str(tmp_path / "src"),
                                 "s3://b/target"], {})
    assert folders == [out, tmp_path / "db", tmp_path / "src"]
    assert _run_task_through_kfp(monkeypatch, tmp_path, client, tasks, folders)
    (_, run), remove = client.log
    assert run["environment"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert run["environment"]["DAKD_TIMINGS_URI"] == "s3://b/runs/r/timings"
    assert run["environment"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert run["environment"]["DAKD_NO_PROGRESS"] == "1" and "GITHUB_TOKEN" not in run["environment"]
    assert run["user"] == f"{os.getuid()}:{os.getgid()}" and run["network_mode"] == "host"
    assert set(run["volumes"]) == {str(out), str(tmp_path / "db"), str(tmp_path / "src"), str(out / "kfp")}
    assert all(v["bind"] == k for k, v in run["volumes"].items())
    assert run["image"] == "dakd-test/dakd:t-cpu" and run["detach"] and "auto_remove" not in run
    assert remove == ("remove", True)


def test_a_failed_task_container_is_a_failed_task(monkeypatch, tmp_path):
    client = FakeClient(status=3)
    tasks = DockerTasks(environ={"DAKD_CPU_IMAGE": "dakd-test/dakd:t-cpu"}, client=client)
    assert not _run_task_through_kfp(monkeypatch, tmp_path, client, tasks, [tmp_path / "out"])
    assert client.log[-1] == ("remove", True)


def test_images_default_to_this_versions_cpu_image_and_are_never_pulled():
    from dakd_core import __version__

    tasks = DockerTasks(environ={}, client=FakeClient(images=()))
    cpu = f"ghcr.io/dakd/dakd:{__version__}-cpu"
    assert tasks.environment() == {"DAKD_IMAGE": cpu, "DAKD_CPU_IMAGE": cpu}
    with pytest.raises(DakdError, match=f"image {cpu} is not on this machine .*docker/build.py --variant cpu"):
        tasks.check_images()
    gpu = DockerTasks(environ={"DAKD_IMAGE": "r/dakd:1", "DAKD_CPU_IMAGE": "r/dakd:1-cpu"}, client=FakeClient())
    assert gpu.environment() == {"DAKD_IMAGE": "r/dakd:1", "DAKD_CPU_IMAGE": "r/dakd:1-cpu"}
    with pytest.raises(DakdError, match="image r/dakd:1 is not on this machine"):
        docker_runner.run_container(FakeClient(), "r/dakd:1", ["true"], {})


def test_cli_without_an_engine_is_a_clear_error(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "dakd_core", "run", "--runner", "docker", "--out", str(tmp_path / "o")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--runner docker: no docker engine reachable" in res.stderr
    assert not (tmp_path / "o").exists()  # nothing ran
