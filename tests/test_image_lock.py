"""Image digests: the lock file docker/build.py --push writes, checked entry by entry, and
`dakd compile --images LOCK` compiling components with `name@sha256:...` references."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from dakd_core.errors import ConfigError
from dakd_core.orchestration.images import DEFAULT_IMAGE, load_lock, pinned_environ, repository

DAKD = [sys.executable, "-m", "dakd_core"]
GPU_DIGEST = "ghcr.io/dakd/dakd@sha256:" + "1" * 64
CPU_DIGEST = "ghcr.io/dakd/dakd@sha256:" + "2" * 64


def _lock(tmp_path, content) -> str:
    path = tmp_path / "images.lock.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _release_lock(tmp_path) -> str:
    return _lock(tmp_path, {DEFAULT_IMAGE: GPU_DIGEST, f"{DEFAULT_IMAGE}-cpu": CPU_DIGEST,
                            f"{DEFAULT_IMAGE}-mlflow": "ghcr.io/dakd/dakd@sha256:" + "3" * 64})


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DAKD_IMAGE", "DAKD_CPU_IMAGE", "DAKD_LOCAL_RUN")}
    env.update(extra)
    return env


def test_repository_of_a_tag_reference():
    assert repository("ghcr.io/dakd/dakd:0.1.0-cpu") == "ghcr.io/dakd/dakd"
    assert repository("localhost:5000/dakd:abc") == "localhost:5000/dakd"
    assert repository("localhost:5000/dakd") == "localhost:5000/dakd"  # untagged: the port is no tag


def test_pinned_environ_maps_the_selected_tags_to_their_digests(tmp_path):
    lock = _release_lock(tmp_path)
    assert pinned_environ(lock, {}) == {"DAKD_IMAGE": GPU_DIGEST, "DAKD_CPU_IMAGE": CPU_DIGEST}
    # images chosen by DAKD_IMAGE are looked up under that tag, never silently left as tags
    with pytest.raises(ConfigError, match=r"images\.lock\.json: no digest recorded for reg\.io/dakd:abc "):
        pinned_environ(lock, {"DAKD_IMAGE": "reg.io/dakd:abc"})


@pytest.mark.parametrize("content,message", [
    ({DEFAULT_IMAGE: "ghcr.io/dakd/dakd@sha256:" + "1" * 63}, "is not <name>@sha256:<64 hex digits>"),
    ({DEFAULT_IMAGE: "ghcr.io/dakd/dakd@sha256:" + "A" * 64}, "is not <name>@sha256:<64 hex digits>"),
    ({DEFAULT_IMAGE: "ghcr.io/dakd/dakd:0.1.0"}, "is not <name>@sha256:<64 hex digits>"),
    ({DEFAULT_IMAGE: "ghcr.io/dakd/dakd@md5:" + "1" * 32}, "is not <name>@sha256:<64 hex digits>"),
    ({DEFAULT_IMAGE: 7}, "is not <name>@sha256:<64 hex digits>"),
    ({DEFAULT_IMAGE: "ghcr.io/evil/dakd@sha256:" + "1" * 64}, "names another repository"),
    ([GPU_DIGEST], "non-empty JSON object"),
    ({}, "non-empty JSON object"),
    ("{not json", "not a readable JSON image lock file"),
])
def test_malformed_lock_is_a_config_error_naming_the_file(tmp_path, content, message):
    lock = _lock(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as err:
        load_lock(lock)
    assert str(err.value).startswith(f"{lock}: ")


def test_missing_lock_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json: image lock file not found"):
        load_lock(tmp_path / "nope.json")


def test_compile_with_a_lock_references_the_digests(tmp_path):
    out = tmp_path / "pinned.yaml"
    res = subprocess.run([*DAKD, "compile", "--images", _release_lock(tmp_path), "-o", str(out)],
                         env=_clean_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pipeline = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert images == {GPU_DIGEST, CPU_DIGEST}


def test_compile_with_a_bad_digest_exits_2_naming_the_file(tmp_path):
    lock = _lock(tmp_path, {DEFAULT_IMAGE: "ghcr.io/dakd/dakd@sha256:deadbeef", f"{DEFAULT_IMAGE}-cpu": CPU_DIGEST})
    out = tmp_path / "p.yaml"
    res = subprocess.run([*DAKD, "compile", "--images", lock, "-o", str(out)],
                         env=_clean_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert f"dakd compile: error: {lock}: {DEFAULT_IMAGE}: 'ghcr.io/dakd/dakd@sha256:deadbeef'" in res.stderr
    assert not out.exists()
