"""`dakd run --runner docker`: every task of the pipeline in its container image, through kfp.local's
DockerRunner, with what kfp.local (2.17.3) leaves out:

- environment: a container gets only its task's own variables (every dakd task sets
  DAKD_NO_PROGRESS), so without more each task would log to a throwaway MLflow store inside its
  container and write nowhere the next task reads. The run's MLFLOW_*, DAKD_* and AWS_* variables
  (tracking server and credentials, timings prefix, S3 endpoint and keys) and OMP_NUM_THREADS are
  merged in, the task's own on top;
- user: the images run as uid 1000; the tasks write into the caller's output directory, so they
  run as the caller's uid:gid (HOME=/tmp: that uid has no home in the image);
- mounts: kfp.local mounts the pipeline root only; the output directory, a file:// store, a
  sqlite tracking database or local artifact root and local dataset roots are bind-mounted at the
  same path, so every URI means the same file inside and outside. A relative path could not:
  it is an error;
- network: the host's (`network_mode=host`): a server on 127.0.0.1 is reachable and no container
  gets an address of its own;
- images are never pulled (kfp.local pulls a missing one): a missing image is an error naming the
  build command, and a task's exit status is read before its container is removed (kfp.local's
  auto_remove reports a container that vanished too early as a success).

Images: the GPU stages run in DAKD_IMAGE and the others in DAKD_CPU_IMAGE (as `dakd compile`);
unset, every stage runs in the CPU image of this package version (`docker/build.py --variant cpu
--version-tag`): containers get no GPU here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from dakd_core.errors import ConfigError, DakdError
from dakd_core.orchestration.images import CPU_IMAGE_ENV, IMAGE_ENV, component_images

# Variables of the run that every container gets (the task's own win on a clash); the thread
# count too, as a subprocess task inherits it (it changes speed and floating-point sums)
PASSED_PREFIXES = ("MLFLOW_", "DAKD_", "AWS_")
PASSED_NAMES = ("OMP_NUM_THREADS",)
BUILD_HINT = "python docker/build.py --variant cpu --version-tag (README: Containers)"


def container_environment(task_env: Mapping[str, str], host_env: Mapping[str, str]) -> dict[str, str]:
    """What one task's container gets: the run's MLFLOW_*/DAKD_*/AWS_* variables and thread count,
    HOME=/tmp, then the task's own variables on top."""
    env = {k: v for k, v in host_env.items() if k.startswith(PASSED_PREFIXES) or k in PASSED_NAMES}
    env["HOME"] = "/tmp"
    env.update(task_env)
    return env


def mount_point(uri: str, what: str) -> Path | None:
    """The host folder a URI's data lives in (file:// or a plain path: itself; sqlite:///: the
    database's folder), or None for a remote one (s3://, http(s)://, postgresql://, pvc://). A
    relative path is an error: inside a container it would name another place."""
    if not uri:
        return None
    if uri.startswith("sqlite:///"):
        path, is_file = uri[len("sqlite:///"):], True  # sqlite:////abs/db: absolute
    elif uri.startswith("file://"):
        path, is_file = uri[len("file://"):], False
    elif "://" in uri:
        return None
    else:
        path, is_file = uri, False
    if not os.path.isabs(path):
        raise ConfigError(f"{what} {uri!r} is a relative path: tasks in containers need an absolute one "
                          "(it is mounted at the same path)")
    return Path(path).parent if is_file else Path(path)


def mounts(folders: Iterable[Path]) -> dict[str, dict[str, str]]:
    """docker SDK volumes binding each folder at the same path (created if missing; one inside
    another is already there)."""
    folders = {Path(os.path.normpath(f)) for f in folders}
    volumes = {}
    for folder in sorted(folders):
        if any(other in folder.parents for other in folders):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        volumes[str(folder)] = {"bind": str(folder), "mode": "rw"}
    return volumes


class DockerTasks:
    """The container side of `dakd run --runner docker` (see the module docstring)."""

    def __init__(self, environ: Mapping[str, str] | None = None, client=None):
        environ = os.environ if environ is None else environ
        cpu_image = environ.get(CPU_IMAGE_ENV) or component_images({})[1]
        self.images = {IMAGE_ENV: environ.get(IMAGE_ENV) or cpu_image, CPU_IMAGE_ENV: cpu_image}
        self.user = f"{os.getuid()}:{os.getgid()}"
        self._client = client

    def client(self):
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env()
                self._client.ping()
            except docker.errors.DockerException as e:
                raise DakdError(f"--runner docker: no docker engine reachable ({e}); start dockerd or use "
                                "--runner subprocess") from None
        return self._client

    def check_images(self) -> None:
        """Fail before any task runs when an image is not on this machine (nothing is pulled)."""
        import docker

        for image in sorted(set(self.images.values())):
            try:
                self.client().images.get(image)
            except docker.errors.ImageNotFound:
                raise DakdError(f"--runner docker: image {image} is not on this machine (nothing is pulled); "
                                f"build it: {BUILD_HINT}, or name another with {CPU_IMAGE_ENV}/{IMAGE_ENV}") from None

    def environment(self) -> dict[str, str]:
        """Set while the pipeline is imported: the components' images (components/_base.py)."""
        return dict(self.images)

    def kfp_runner(self):
        from kfp import local

        return local.DockerRunner(user=self.user, network_mode="host")

    def host_folders(self, out: Path, store_uri: str, tracking_uri: str, data_uris: Iterable[str],
                     environ: Mapping[str, str]) -> list[Path]:
        """Every host folder a task reads or writes through a URI of this run."""
        named = [("the output directory", str(out)), ("the store", store_uri), ("MLFLOW_TRACKING_URI", tracking_uri),
                 *(("a dataset root", uri) for uri in data_uris),
                 *((name, environ.get(name, "")) for name in ("DAKD_MLFLOW_ARTIFACT_ROOT", "MLFLOW_ARTIFACT_ROOT"))]
        return [p for what, uri in named if (p := mount_point(uri, what)) is not None]

    @contextlib.contextmanager
    def running(self, folders: Iterable[Path]) -> Iterator[None]:
        """While the pipeline runs, kfp.local starts every container through `run_container`, with
        `folders` mounted too."""
        from kfp.local import docker_task_handler

        ours = mounts(folders)

        def run(client, image, command, volumes: dict, **run_args) -> int:
            return run_container(client, image, command, {**ours, **volumes}, **run_args)

        original, docker_task_handler.run_docker_container = docker_task_handler.run_docker_container, run
        try:
            yield
        finally:
            docker_task_handler.run_docker_container = original


def run_container(client, image: str, command: list[str], volumes: dict, environment: Mapping[str, str] | None = None,
                  host_env: Mapping[str, str] | None = None, **run_args) -> int:
    """Run one task's container to the end: its output printed (to the run's log), its exit status
    returned, the container removed. Replaces kfp.local's run_docker_container (same signature)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise DakdError(f"image {image} is not on this machine (nothing is pulled); build it: {BUILD_HINT}") from None
    env = container_environment(environment or {}, os.environ if host_env is None else host_env)
    container = client.containers.run(image=image, command=command, volumes=volumes, environment=env,
                                      detach=True, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
