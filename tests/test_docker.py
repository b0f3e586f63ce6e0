"""docker/build.py without a docker engine: tags, build context, build args, push calls, and the
Dockerfiles' pins, checked against a recording fake of the docker SDK client."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
import tarfile
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

    def build(self, **kw):
        with tarfile.open(fileobj=kw["fileobj"], mode="r:gz") as tar:
            self.context_names = tar.getnames()
        self.log.append(("build", kw["tag"], kw["dockerfile"], kw["buildargs"], kw["custom_context"]))
        return FakeImage(self.log), iter([{"stream": "Step 1/1\n"}])

    def push(self, repo, tag, stream, decode):
        self.log.append(("push", repo, tag))
        return iter([{"status": "Pushed"}])


class FakeClient:
    def __init__(self):
        self.images = FakeImages()


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


def test_context_excludes_ignored_files(tmp_path):
    repo = _git_repo(tmp_path)
    (repo / "new_module.py").write_text("")  # untracked, not ignored: part of the work
    names = tarfile.open(fileobj=build.build_context(repo), mode="r:gz").getnames()
    assert sorted(names) == [".gitignore", "dakd_core/__init__.py", "new_module.py"]


def test_plan_tags():
    pl = build.plan("cpu", "registry.example/team/", "abc123def456", "1.2.3", {"A": "b"})
    assert pl.tags == ["registry.example/team/dakd:abc123def456-cpu", "registry.example/team/dakd:1.2.3-cpu"]
    assert pl.dockerfile == "docker/Dockerfile.cpu" and pl.buildargs == {"A": "b"}
    assert build.plan("cuda", "r", "c", None).tags == ["r/dakd:c"]
    with pytest.raises(build.BuildError, match="unknown variant 'rocm'"):
        build.plan("rocm", "r", "c", None)


def test_main_builds_tags_and_pushes_both_variants(capsys):
    client = FakeClient()
    rc = build.main(["--push", "--version-tag", "--registry", "reg.io/x",
                     "--build-arg", "BASE_IMAGE=pytorch/pytorch:custom"], client=client)
    assert rc == 0
    commit = build.git_commit_tag()
    log = client.images.log
    builds = [e for e in log if e[0] == "build"]
    assert [b[1] for b in builds] == [f"reg.io/x/dakd:{commit}", f"reg.io/x/dakd:{commit}-cpu"]
    assert [b[2] for b in builds] == ["docker/Dockerfile.cuda", "docker/Dockerfile.cpu"]
    assert all(b[3] == {"BASE_IMAGE": "pytorch/pytorch:custom"} and b[4] for b in builds)
    version = build.package_version()
    assert ("tag", "reg.io/x/dakd", f"{version}-cpu") in log
    pushes = [e for e in log if e[0] == "push"]
    assert ("push", "reg.io/x/dakd", version) in pushes and len(pushes) == 4
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


def test_dockerfiles_pin_torch_and_run_as_non_root():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "docker" / name).read_text()
        assert "requirements/constraints.txt" in text and "requirements/kfp.txt" in text
        assert re.search(r"^USER 1000$", text, re.M), name
        # every directory the Dockerfile copies is tracked in the repository
        for src in re.findall(r"^COPY (\S+)/ ", text, re.M):
            assert (ROOT / src).is_dir(), f"{name} copies missing {src}/"
    assert "torch==2.13.0" in (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "pytorch/pytorch:2.13.0-cuda" in (ROOT / "docker" / "Dockerfile.cuda").read_text()
