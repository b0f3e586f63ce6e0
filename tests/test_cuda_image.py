"""The CUDA image: ONNX Runtime's GPU build in place of (not beside) the CPU build that
requirements/runtime.txt pins for every image, on PyPI's CUDA torch with no CUDA base image, and a
build-time check of its CUDA libraries (docker/check_cuda_image.py) that needs no GPU; read from
the Dockerfile and run on fakes, no Docker needed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return dict(line.split("#")[0].strip().split("==") for line in lines if "==" in line.split("#")[0])


def _commands(dockerfile: str) -> list[str]:
    text = (ROOT / "docker" / dockerfile).read_text()
    return [c.strip() for c in re.sub(r"\\\n", " ", text).split("&&")]


def test_cuda_image_swaps_onnxruntime_for_the_gpu_build_at_the_same_version():
    assert _pins("cuda-onnxruntime.txt") == {"onnxruntime-gpu": _pins("runtime.txt")["onnxruntime"]}
    assert "onnxruntime" not in _pins("cuda.txt")  # installed with runtime.txt: both builds at once
    commands = _commands("Dockerfile.cuda")
    runtime = next(i for i, c in enumerate(commands) if "-r requirements/runtime.txt" in c)
    assert "sys.exit(0 if torch.version.cuda else 1)" in commands[runtime + 1]  # stops on a CPU torch
    assert commands[runtime + 2] == "pip uninstall -y onnxruntime"
    assert commands[runtime + 3] == "pip install -c requirements/constraints.txt --no-deps -r requirements/cuda-onnxruntime.txt"
    assert commands[runtime + 4] == "! pip show -q onnxruntime"  # the build fails if the CPU build stayed
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "cuda-onnxruntime" not in cpu and "-r requirements/runtime.txt" in cpu


def test_cuda_image_is_built_on_the_cpu_images_base_and_checks_its_libraries_last():
    text = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and base.group(1) == re.search(r"^ARG PYTHON_IMAGE=(\S+)$", cpu, re.M).group(1)
    assert [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")] == [
        "${PYTHON_IMAGE}", "deps", "${PYTHON_IMAGE}"]  # no CUDA base image to pull
    assert _commands("Dockerfile.cuda")[-1].startswith("python /opt/dakd/check_cuda_image.py")
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=13.0"' in text and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_cuda_image", ROOT / "docker" / "check_cuda_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_libraries_are_unresolved_unless_on_disk_loaded_or_the_drivers(check, tmp_path):
    # what ldd prints for ONNX Runtime's CUDA provider in an image whose torch is a CUDA 12 build
    ldd = tmp_path / "ldd"
    ldd.write_text("#!/bin/sh\ncat <<'EOF'\n"
                   "\tlinux-vdso.so.1 (0x00007ffd)\n"
                   "\tlibcublasLt.so.13 => not found\n"
                   "\tlibcublas.so.13 => not found\n"
                   "\tlibcurand.so.10 => /opt/venv/lib/nvidia/lib/libcurand.so.10 (0x00007f01)\n"
                   "\tlibcudart.so.13 => not found\n"
                   "\tlibcuda.so.1 => not found\n"
                   "\tlibnvidia-ml.so.1 => not found\n"
                   "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n"
                   "EOF\n")
    ldd.chmod(0o755)
    lib = tmp_path / "libonnxruntime_providers_cuda.so"
    assert check.unresolved(lib, set(), ldd=str(ldd)) == {"libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13"}
    # torch's CUDA 13 libraries loaded in the process satisfy the provider; the driver's never count
    assert check.unresolved(lib, {"libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13"}, ldd=str(ldd)) == set()
    assert check.unresolved(lib, {"libcublasLt.so.12", "libcudart.so.12"}, ldd=str(ldd)) == {
        "libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13"}


def test_loaded_libraries_are_read_from_proc_maps(check):
    maps = ("7f00-7f01 r-xp 00000000 08:01 12 /opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcublasLt.so.13\n"
            "7f01-7f02 r--p 00000000 08:01 13 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7f02-7f03 rw-p 00000000 00:00 0 \n"
            "7f03-7f04 r--p 00000000 08:01 14 /usr/lib/locale/C.utf8/LC_CTYPE\n"
            "7ffd-7ffe r-xp 00000000 00:00 0 [vdso]\n")
    assert check.loaded_libraries(maps) == {"libcublasLt.so.13", "libc.so.6"}
    assert check.cuda_major("13.0") == "13" and check.cuda_major("12.8") == "12" and check.cuda_major(None) is None


def test_the_check_fails_on_a_cpu_torch(check):
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        pytest.skip("a CUDA torch: the CUDA image's build runs the whole check")
    assert check.failures() == [f"torch {torch.__version__} is not a CUDA build"]
    assert check.main() == 1
