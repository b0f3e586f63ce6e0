"""docker/test-containers.sh's decision between SKIPPED (no engine can run here: CI stays green and
says so) and FAILED (the engine runs, our images or pipeline do not), with fake `id`, `docker`,
`dockerd` and `debootstrap` on a PATH of their own: no engine is needed and none is touched."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docker" / "test-containers.sh"
# what the script and docker/base-from-debian.sh call besides the fakes
TOOLS = ("bash", "env", "mktemp", "dirname", "seq", "sleep", "rm", "tail", "awk", "cat", "chmod", "mkdir", "xargs",
         "setsid", "nice", "grep", "cut", "git", "timeout", "df")
# One fake for each engine program: its behaviour comes from FAKE_* variables. `docker info` answers
# when FAKE_ENGINE=running; `docker image inspect` finds an image when FAKE_IMAGES=present; `docker
# run` works unless FAKE_RUN=fails; dockerd dies at once; debootstrap fails, or takes a minute
# when FAKE_DEBOOTSTRAP=slow.
FAKES = {
    "id": 'if [ "$1" = -u ]; then echo "$FAKE_UID"; else exec /usr/bin/id "$@"; fi',
    "docker": """case "$1" in
  info) [ "$FAKE_ENGINE" = running ] || exit 1; [ "$2" != -f ] || echo /tmp ;;
  version) echo 99.0 ;;
  image) [ "$FAKE_IMAGES" = present ] ;;
  run) [ "$FAKE_RUN" != fails ] || { echo "fake docker: cannot create a container" >&2; exit 125; } ;;
  *) exit 0 ;;
esac""",
    "dockerd": 'echo "fake dockerd: failed to start daemon" >&2; exit 1',
    "debootstrap": '[ "$FAKE_DEBOOTSTRAP" != slow ] || exec sleep 60\n'
                   'echo "fake debootstrap: E: Couldn\'t download packages" >&2; exit 1',
}


@pytest.fixture
def bin_dir(tmp_path):
    """A PATH holding only the fakes and the tools the scripts need (no real docker, dockerd, apt-get)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in TOOLS:
        where = shutil.which(name)
        assert where, f"{name} is not installed"
        (bin_dir / name).symlink_to(where)
    (bin_dir / "python3").symlink_to(sys.executable)
    wheels = tmp_path / "wheels"  # a CPU torch wheel is here (test_no_cpu_torch_wheel_reachable_skips: not)
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    return bin_dir


def add_fakes(bin_dir: Path, *names: str) -> None:
    for name in names:
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + FAKES[name] + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_script(bin_dir: Path, **fake) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "PY": sys.executable, "HOME": os.environ.get("HOME", "/tmp"),
           "DOCKER_HOST": "unix:///nonexistent/docker.sock",  # docker/build.py's SDK reaches no real engine
           "DAKD_WHEELS": str(bin_dir.parent / "wheels"), "FAKE_UID": "0", **fake}
    return subprocess.run([str(bin_dir / "bash"), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def skipped_because(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stdout.splitlines() if line.startswith("SKIPPED: test-containers: ")]
    assert res.returncode == 0 and len(lines) == 1, res.stdout + res.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mirror(tmp_path):
    """A Debian mirror that answers on 127.0.0.1: its bookworm Release file only."""
    root = tmp_path / "mirror"
    (root / "debian/dists/bookworm").mkdir(parents=True)
    (root / "debian/dists/bookworm/Release").write_text("Suite: bookworm\n")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian"
    server.shutdown()


def test_not_root_and_no_engine_skips(bin_dir):
    add_fakes(bin_dir, "id", "docker")  # no dockerd on PATH: it would have to be installed
    line = skipped_because(run_script(bin_dir, FAKE_UID="1000"))
    assert "no docker engine and no way to install one" in line


def test_a_dockerd_that_cannot_start_skips(bin_dir):
    add_fakes(bin_dir, "id", "docker", "dockerd", "debootstrap")
    res = run_script(bin_dir)
    assert "dockerd could not start" in skipped_because(res)
    assert "fake dockerd: failed to start daemon" in res.stdout  # its log says why


def test_a_debian_mirror_that_does_not_answer_skips(bin_dir):
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    res = run_script(bin_dir, FAKE_ENGINE="running", DEBIAN_MIRROR=f"http://127.0.0.1:{closed_port()}/debian")
    assert "the Debian mirror does not answer" in skipped_because(res)


def test_an_engine_that_cannot_run_a_container_skips(bin_dir):
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    res = run_script(bin_dir, FAKE_ENGINE="running", FAKE_IMAGES="present", FAKE_RUN="fails")
    assert "the docker engine cannot run a container" in skipped_because(res)
    assert "fake docker: cannot create a container" in res.stdout


def test_a_failure_once_the_mirror_answers_is_a_failure_not_a_skip(bin_dir, mirror):
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    res = run_script(bin_dir, FAKE_ENGINE="running", DEBIAN_MIRROR=mirror)
    assert res.returncode != 0 and "SKIPPED" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert "fake debootstrap: E: Couldn't download packages" in res.stderr
    assert "docker/base-from-debian.sh failed" in res.stderr


def test_a_failed_image_build_is_a_failure_not_a_skip(bin_dir):
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    res = run_script(bin_dir, FAKE_ENGINE="running", FAKE_IMAGES="present")
    assert res.returncode != 0 and "SKIPPED" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert "building the mlflow image failed" in res.stderr


def test_the_cuda_image_is_left_out_without_the_disk_for_it_and_the_rest_still_runs(bin_dir):
    # the engine's root (/tmp for the fake) never has 10**6 GB free; with 0 GB asked the CUDA
    # image is planned and nothing is said; either way the MLflow build runs (and fails: fakes)
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    res = run_script(bin_dir, FAKE_ENGINE="running", FAKE_IMAGES="present", CUDA_IMAGE="1", CUDA_FREE_GB="1000000")
    line = next(l for l in res.stdout.splitlines() if l.startswith("SKIPPED: CUDA image: "))
    assert line.endswith("GB free under /tmp, it needs 1000000 (CUDA_FREE_GB); the GPU stages run in the CPU image")
    assert res.returncode == 1 and "building the mlflow image failed" in res.stderr
    res = run_script(bin_dir, FAKE_ENGINE="running", FAKE_IMAGES="present", CUDA_IMAGE="1", CUDA_FREE_GB="0")
    assert "SKIPPED" not in res.stdout and "building the mlflow image failed" in res.stderr


def test_provisioning_over_its_time_limit_skips(bin_dir, mirror):
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    res = run_script(bin_dir, FAKE_ENGINE="running", DEBIAN_MIRROR=mirror, FAKE_DEBOOTSTRAP="slow", PROVISION_LIMIT_S="5")
    line = skipped_because(res)
    assert "building the images took over PROVISION_LIMIT_S=5 s here" in line and "load average" in line


def test_no_cpu_torch_wheel_reachable_skips(bin_dir, tmp_path):
    add_fakes(bin_dir, "id", "docker", "debootstrap")
    index = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    res = run_script(bin_dir, FAKE_ENGINE="running", DAKD_WHEELS=str(tmp_path / "empty"), TORCH_INDEX_URL=index)
    assert f"no CPU torch wheel here (DAKD_WHEELS, PIP_FIND_LINKS) and {index} does not answer" in skipped_because(res)
