"""Check, without a GPU, that the CUDA image's CUDA libraries all resolve but the driver's.

Run by docker/Dockerfile.cuda at the end of its build (and by hand: `docker run IMAGE python
/opt/dakd/check_cuda_image.py`). On a GPU node the NVIDIA container toolkit mounts the driver's
libraries (libcuda.so.1, libnvidia-ml.so.1); every other library that torch's CUDA build and ONNX
Runtime's CUDA provider link must be in the image, at the CUDA major version they were built for.
A missing or mismatched one does not fail at import: torch fails at its first CUDA call, and ONNX
Runtime logs an error and silently runs on the CPU. Both are caught here on any machine:

- torch is a CUDA build whose CUDA major version is ONNX Runtime's;
- after `import torch` (dakd always imports it before ONNX Runtime, so its CUDA libraries are the
  ones already loaded when a session starts), `ldd` of libtorch_cuda.so and of ONNX Runtime's CUDA
  provider finds every library but the driver's, either on disk or among those loaded.

Exit status 0 when all hold, 1 with one line per failure otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# What the NVIDIA container toolkit mounts from the node's driver (NVIDIA_DRIVER_CAPABILITIES
# compute: libcuda, utility: libnvidia-ml for nvidia-smi and pynvml); never in an image.
DRIVER_LIBRARIES = frozenset({"libcuda.so.1", "libnvidia-ml.so.1"})
_NOT_FOUND = re.compile(r"^\s*(\S+) => not found", re.M)


def unresolved(library: Path, loaded: set[str], ldd: str = "ldd") -> set[str]:
    """The libraries `library` needs (directly or through those found) that neither the dynamic
    loader finds on disk nor the process has already loaded; the driver's are left out."""
    out = subprocess.run([ldd, str(library)], capture_output=True, text=True, check=True).stdout
    return set(_NOT_FOUND.findall(out)) - loaded - DRIVER_LIBRARIES


def loaded_libraries(maps: str) -> set[str]:
    """File names of the shared libraries mapped into a process (the text of /proc/PID/maps)."""
    names = set()
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if ".so" in path:
            names.add(os.path.basename(path))
    return names


def cuda_major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def failures() -> list[str]:
    import torch  # first, as in dakd: its CUDA libraries are loaded before ONNX Runtime's provider

    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as ort_build

    found = []
    if not torch.version.cuda:
        return [f"torch {torch.__version__} is not a CUDA build"]
    ort_cuda = getattr(ort_build, "cuda_version", None)
    if cuda_major(torch.version.cuda) != cuda_major(ort_cuda):
        found.append(f"torch is built for CUDA {torch.version.cuda}, onnxruntime {ort.__version__} for CUDA "
                     f"{ort_cuda}: ONNX Runtime's CUDA provider cannot use torch's CUDA libraries")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        found.append(f"onnxruntime {ort.__version__} has no CUDA provider (the CPU build is installed)")
    loaded = loaded_libraries(Path("/proc/self/maps").read_text())
    targets = [Path(torch.__file__).parent / "lib" / "libtorch_cuda.so",
               Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"]
    for target in targets:
        if not target.exists():
            found.append(f"{target} is missing")
            continue
        missing = unresolved(target, loaded)
        if missing:
            found.append(f"{target.name} needs {', '.join(sorted(missing))}: in no library folder of the image")
    return found


def main() -> int:
    problems = failures()
    for line in problems:
        print(f"check_cuda_image: {line}", file=sys.stderr)
    if not problems:
        import onnxruntime as ort
        import torch

        print(f"check_cuda_image: torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version()}) and onnxruntime {ort.__version__}: every CUDA library resolves "
              f"but the driver's ({', '.join(sorted(DRIVER_LIBRARIES))})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
