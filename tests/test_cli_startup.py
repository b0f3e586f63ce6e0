"""CLI start-up (issue 14, item 11): `dakd --help` and `dakd compile` import no ML framework.

torch/timm alone take seconds to import, and kfp's compile-time `inspect.stack()` calls scan
every loaded module, so a torch import made `dakd compile` 13-30 s. Checked on `sys.modules` in a
fresh interpreter, not on wall time (the dev machines are shared)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "timm", "mlflow", "torchvision", "onnx", "onnxruntime")

_PROBE = """
import json, sys
from dakd_core.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help exits
    code = e.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
"""


def _probe(*argv: str, cwd=None) -> dict:
    res = subprocess.run([sys.executable, "-c", _PROBE % (HEAVY,), *argv], capture_output=True, text=True,
                         timeout=120, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_help_imports_no_ml_framework():
    out = _probe("--help")
    assert out == {"code": 0, "heavy": []}


def test_command_help_builds_only_its_flags_without_torch():
    out = _probe("distill", "--help")
    assert out == {"code": 0, "heavy": []}


def test_compile_imports_no_ml_framework(tmp_path):
    target = tmp_path / "p.yaml"
    out = _probe("compile", "-o", str(target))
    assert out == {"code": 0, "heavy": []}
    assert target.read_text().startswith("# PIPELINE DEFINITION")


def test_python_m_dakd_core_help_lists_every_command():
    res = subprocess.run([sys.executable, "-m", "dakd_core", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for command in ("compile", "distill", "pretrain", "run", "submit"):
        assert f"    {command} " in res.stdout


def test_unchosen_commands_still_parse_fully():
    """Building only the chosen command's flags must not change what the full parser accepts."""
    from dakd_core.cli import build_parser

    argv = ["pretrain", "--lr", "0.25", "--crop", "16", "32"]
    lazy, full = build_parser(argv).parse_args(argv), build_parser().parse_args(argv)
    assert (lazy.lr, lazy.crop) == (full.lr, full.crop) == (0.25, [16, 32])
