"""The CUDA image runs ONNX Runtime's GPU build, in place of (not beside) the CPU build that
requirements/runtime.txt pins for every image; read from the Dockerfile, no Docker needed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return dict(line.split("#")[0].strip().split("==") for line in lines if "==" in line.split("#")[0])


def test_cuda_image_swaps_onnxruntime_for_the_gpu_build_at_the_same_version():
    assert _pins("cuda-onnxruntime.txt") == {"onnxruntime-gpu": _pins("runtime.txt")["onnxruntime"]}
    assert "onnxruntime" not in _pins("cuda.txt")  # installed with runtime.txt: both builds at once
    text = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    commands = [c.strip() for c in re.sub(r"\\\n", " ", text).split("&&")]
    runtime = next(i for i, c in enumerate(commands) if "-r requirements/runtime.txt" in c)
    assert commands[runtime + 1] == "pip uninstall -y onnxruntime"
    assert commands[runtime + 2] == "pip install -c requirements/constraints.txt --no-deps -r requirements/cuda-onnxruntime.txt"
    # the build fails if the CPU build is still installed or the GPU build has no CUDA provider
    assert commands[runtime + 3] == "! pip show -q onnxruntime"
    assert "assert 'CUDAExecutionProvider' in p" in commands[runtime + 4]
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "cuda-onnxruntime" not in cpu and "-r requirements/runtime.txt" in cpu
