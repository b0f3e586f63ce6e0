"""docker/build.py without a docker engine: tags, build context, build args, push calls, the
digests recorded after a push, and the Dockerfiles' pins, checked against a recording fake of the
docker SDK client."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("dakd_docker_build", ROOT / "docker" / "build.py")
build = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = build  # dataclasses look their module up while the class is created
spec.loader.exec_module(build)


class FakeImage:
    def __init__(self, log):
        self.log = log

    def tag(self, repo, tag):
        self.log.append(("tag", repo, tag))


class FakeImages:
    def __init__(self):
        self.log = []
        self.context_names = None
        self.built = set()
        self.error = None  # an engine error to stream instead of building

    def api_build(self, **kw):
        """The low-level API's build: the engine's output as decoded chunks, as it comes."""
        with tarfile.open(fileobj=kw["fileobj"], mode="r:gz") as tar:
            self.context_names = tar.getnames()
        self.log.append(("build", kw["tag"], kw["dockerfile"], kw["buildargs"], kw["custom_context"]))
        self.options = {k: kw[k] for k in ("pull", "network_mode", "forcerm", "decode")}
        yield {"stream": "Step 1/1\n"}
        if self.error:
            yield {"error": self.error}
            return
        self.built.add(kw["tag"])

    def get(self, tag):
        assert tag in self.built, tag
        return FakeImage(self.log)

    def push(self, repo, tag, stream, decode):
        self.log.append(("push", repo, tag))
        # what the engine streams for a push: progress, then an aux record with the digest
        return iter([{"status": "Pushed"}, {"progressDetail": {}, "aux": {"Tag": tag, "Digest": fake_digest(repo, tag),
                                                                       "Size": 1234}}])


def fake_digest(repo, tag):
    return "sha256:" + hashlib.sha256(f"{repo}:{tag}".encode()).hexdigest()


class FakeClient:
    def __init__(self):
        self.images = FakeImages()
        self.api = types.SimpleNamespace(build=self.images.api_build)


def _git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "dakd_core").mkdir(parents=True)
    (repo / "dakd_core" / "__init__.py").write_text('__version__ = "9.8.7"\n')
    (repo / ".gitignore").write_text(".venv/\nsecret.env\n")
    (repo / "secret.env").write_text("AWS_SECRET_ACCESS_KEY=nope\n")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big").write_text("x")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "i"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    return repo


def test_commit_tag_and_dirty_suffix(tmp_path):
    repo = _git_repo(tmp_path)
    tag = build.git_commit_tag(repo)
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    (repo / "dakd_core" / "__init__.py").write_text('__version__ = "9.8.8"\n')
    assert build.git_commit_tag(repo) == f"{tag}-dirty"
    assert build.package_version(repo) == "9.8.8"


def test_context_is_the_tracked_files_plus_the_build_extras(tmp_path):
    repo = _git_repo(tmp_path)
    (repo / "new_module.py").write_text("")  # untracked: not in a fresh clone, not in the image
    names = tarfile.open(fileobj=build.build_context(repo), mode="r:gz").getnames()
    # .build/ca and .build/wheels always exist: the Dockerfiles COPY them
    assert sorted(names) == [".build", ".build/ca", ".build/wheels", ".gitignore", "dakd_core/__init__.py"]

    cert = tmp_path / "proxy.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"PK")
    (wheels / "notes.txt").write_text("not a wheel")
    extras = build.build_extras([cert], wheels)
    assert extras == {".build/ca/00-proxy.crt": cert,
                      ".build/wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl": wheels / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"}
    with tarfile.open(fileobj=build.build_context(repo, extras), mode="r:gz") as tar:
        assert tar.extractfile(".build/ca/00-proxy.crt").read() == cert.read_bytes()
        assert ".build/wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl" in tar.getnames()
    with pytest.raises(build.BuildError, match="--ca-cert .*missing.crt: no such file"):
        build.build_extras([tmp_path / "missing.crt"])
    with pytest.raises(build.BuildError, match="--wheels .*proxy.crt: not a directory"):
        build.build_extras([], cert)


def test_air_gapped_options_reach_the_engine_and_an_engine_error_fails(tmp_path, capsys):
    cert = tmp_path / "proxy.crt"
    cert.write_text("pem")
    client = FakeClient()
    assert build.main(["--variant", "cpu", "--no-pull", "--network", "host", "--ca-cert", str(cert),
                       "--build-arg", "TORCH_INDEX_URL="], client=client) == 0
    assert client.images.options == {"pull": False, "network_mode": "host", "forcerm": True, "decode": True}
    assert client.images.log[0][3] == {"TORCH_INDEX_URL": ""}
    assert ".build/ca/00-proxy.crt" in client.images.context_names
    assert "Step 1/1" in capsys.readouterr().out  # the engine's output is printed as it streams
    assert build.main(["--variant", "cpu"], client=client) == 0 and client.images.options["pull"] is True

    client = FakeClient()
    client.images.error = "The command '/bin/sh -c pip install torch' returned a non-zero code: 1"
    assert build.main(["--variant", "cpu"], client=client) == 2
    assert "failed: The command '/bin/sh -c pip install torch' returned a non-zero code: 1" in capsys.readouterr().err


def test_plan_tags():
    pl = build.plan("cpu", "registry.example/team/", "abc123def456", "1.2.3", {"A": "b"})
    assert pl.tags == ["registry.example/team/dakd:abc123def456-cpu", "registry.example/team/dakd:1.2.3-cpu"]
    assert pl.dockerfile == "docker/Dockerfile.cpu" and pl.buildargs == {"A": "b"}
    assert build.plan("cuda", "r", "c", None).tags == ["r/dakd:c"]
    assert build.plan("mlflow", "r", "c", "1.2.3").tags == ["r/dakd:c-mlflow", "r/dakd:1.2.3-mlflow"]
    with pytest.raises(build.BuildError, match="unknown variant 'rocm'"):
        build.plan("rocm", "r", "c", None)


def test_main_builds_tags_pushes_every_variant_and_records_digests(tmp_path, capsys):
    client = FakeClient()
    lock = tmp_path / "images.lock.json"
    lock.write_text(json.dumps({"other.io/dakd:old": "other.io/dakd@sha256:" + "a" * 64}))  # merged, kept
    rc = build.main(["--push", "--version-tag", "--registry", "reg.io/x", "--lock", str(lock),
                     "--build-arg", "PYTHON_IMAGE=python:custom"], client=client)
    assert rc == 0
    commit = build.git_commit_tag()
    log = client.images.log
    builds = [e for e in log if e[0] == "build"]
    assert [b[1] for b in builds] == [f"reg.io/x/dakd:{commit}", f"reg.io/x/dakd:{commit}-cpu",
                                      f"reg.io/x/dakd:{commit}-mlflow"]
    assert [b[2] for b in builds] == ["docker/Dockerfile.cuda", "docker/Dockerfile.cpu", "docker/Dockerfile.mlflow"]
    assert all(b[3] == {"PYTHON_IMAGE": "python:custom"} and b[4] for b in builds)
    version = build.package_version()
    assert ("tag", "reg.io/x/dakd", f"{version}-cpu") in log
    pushes = [e for e in log if e[0] == "push"]
    assert ("push", "reg.io/x/dakd", version) in pushes and len(pushes) == 6
    # every pushed tag -> the digest its push reported, next to the entry the lock already had
    recorded = json.loads(lock.read_text())
    assert recorded.pop("other.io/dakd:old") == "other.io/dakd@sha256:" + "a" * 64
    assert recorded == {f"reg.io/x/dakd:{tag}": f"reg.io/x/dakd@{fake_digest('reg.io/x/dakd', tag)}"
                        for _, _, tag in pushes}
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["lock"] == str(lock) and report["digests"][f"reg.io/x/dakd:{version}-mlflow"].startswith(
        "reg.io/x/dakd@sha256:")
    # the context is this repository's tracked files: the Dockerfiles' COPY sources are there
    names = set(client.images.context_names)
    assert {"docker/Dockerfile.cpu", "pyproject.toml", "requirements/runtime.txt", "dakd_core/__init__.py"} <= names
    assert not any(n.startswith((".venv/", "demo_out/", ".git/")) for n in names)


def test_bad_build_arg_and_no_engine(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        build.main(["--build-arg", "NOEQUALS"], client=FakeClient())
    import docker

    def no_engine():
        raise docker.errors.DockerException("Error while fetching server API version")

    monkeypatch.setattr(docker, "from_env", no_engine)
    assert build.main(["--variant", "cpu"]) == 2
    assert "no docker engine reachable" in capsys.readouterr().err


def test_push_without_a_digest_fails_and_records_nothing(tmp_path, capsys):
    client = FakeClient()
    client.images.push = lambda repo, tag, stream, decode: iter([{"status": "Pushed"}])  # no aux record
    lock = tmp_path / "images.lock.json"
    assert build.main(["--push", "--variant", "cpu", "--lock", str(lock)], client=client) == 2
    assert "the registry reported no sha256 digest" in capsys.readouterr().err
    assert not lock.exists()


def test_without_push_nothing_is_recorded(tmp_path):
    lock = tmp_path / "images.lock.json"
    assert build.main(["--variant", "mlflow", "--lock", str(lock)], client=FakeClient()) == 0
    assert not lock.exists()  # a local image has no registry digest to pin


def test_a_corrupt_existing_lock_is_an_error_naming_it(tmp_path):
    lock = tmp_path / "images.lock.json"
    lock.write_text("{not json")
    with pytest.raises(build.BuildError, match=re.escape(str(lock))):
        build.write_lock(lock, {"r/dakd:t": "r/dakd@sha256:" + "b" * 64})
    assert lock.read_text() == "{not json" and [p.name for p in tmp_path.iterdir()] == [lock.name]


def test_mlflow_dockerfile_is_slim_and_pinned():
    text = (ROOT / "docker" / "Dockerfile.mlflow").read_text()
    assert re.search(r"^USER 1000$", text, re.M)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and not any("torch" in line for line in installs)
    assert "find_spec('torch') is None" in text  # the build fails if a dependency pulls torch in
    # versions come from requirements/: runtime.txt pins mlflow and boto3, constraints.txt psycopg2
    assert '-c requirements/constraints.txt -c requirements/runtime.txt "mlflow[auth]" boto3 psycopg2-binary' in text
    runtime = (ROOT / "requirements" / "runtime.txt").read_text()
    constraints = (ROOT / "requirements" / "constraints.txt").read_text()
    assert re.search(r"^mlflow==3\.17\.2$", runtime, re.M) and re.search(r"^boto3==\S+$", runtime, re.M)
    for package in ("psycopg2-binary", "Flask-WTF", "WTForms"):
        assert re.search(rf"^{package}==\S+$", constraints, re.M), package


def test_dockerfiles_pin_torch_and_run_as_non_root():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "docker" / name).read_text()
        assert "requirements/constraints.txt" in text and "requirements/kfp.txt" in text
        assert re.search(r"^USER 1000$", text, re.M), name
        # every directory the Dockerfile copies is tracked in the repository (or is build.py's .build/)
        for src in re.findall(r"^COPY (\S+)/ ", text, re.M):
            assert (ROOT / src).is_dir() or src.startswith(build.EXTRA_DIR), f"{name} copies missing {src}/"
    assert "torch==2.13.0" in (ROOT / "docker" / "Dockerfile.cpu").read_text()
    # the CUDA image takes torch==2.13.0 from PyPI, where it is the CUDA build
    assert "pytorch/pytorch" not in (ROOT / "docker" / "Dockerfile.cuda").read_text()
