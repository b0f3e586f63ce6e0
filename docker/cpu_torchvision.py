"""Make the CPU image's torchvision a CPU torchvision: run by docker/Dockerfile.cpu after pip.

PyTorch's CPU index has CPU torchvision wheels; PyPI has only CUDA builds, whose C++ extensions
(`_C.so`, `image.so`) link libtorch_cuda and bundle libcudart/libnvjpeg, so with the CPU torch they
cannot load and `import timm` (which imports torchvision) dies: "operator torchvision::nms does
not exist". Where the torchvision installed here loads its extension (a CPU build), nothing is
changed. Otherwise:

1. the extensions and the CUDA libraries they bundle are deleted (nothing can load them here:
   dead weight, and CUDA libraries have no place in the CPU image);
2. an import hook is installed (a .pth file): just before torchvision is first imported, it
   imports dakd_core.compat, which declares the two operator schemas torchvision's import needs
   (the same shim `dakd_core.models` uses in the venv), so a bare `import timm` works in any
   process. Detection ops (nms) then fail loudly when called; segmentation never calls them.

Finally the whole environment is checked: any CUDA library left fails the build.

    python docker/cpu_torchvision.py    # in the image's Python environment
"""

from __future__ import annotations

import importlib.util
import re
import sys
import sysconfig
from pathlib import Path

HOOK_MODULE = "_dakd_torchvision_ops"
HOOK_SOURCE = '''"""Installed by docker/cpu_torchvision.py: this image's torchvision has no C++ extension, so
dakd_core.compat declares the operator schemas torchvision's import needs, before that import."""
import sys


class _BeforeTorchvision:
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)  # once; compat's own find_spec must not come back here
            import dakd_core.compat  # noqa: F401  (runs ensure_torchvision_ops)
        return None


sys.meta_path.insert(0, _BeforeTorchvision())
'''
# Shared libraries of the CUDA toolkit, the NVIDIA wheels and torch's CUDA build (named so that
# libcurl and the like do not match); a hashed copy like libcudart.faf08d9a.so.13 does.
CUDA_LIBRARY = re.compile(r"^lib(cuda\w*|cudart|cublas\w*|cudnn\w*|cufft\w*|curand|cusparse\w*|cusolver\w*|cupti"
                          r"|cufile\w*|nvjpeg|nvrtc\w*|nvJitLink|nvToolsExt|nvshmem\w*|nccl|torch_cuda|c10_cuda)[.-]")


def cuda_libraries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.so*") if CUDA_LIBRARY.match(p.name) and p.is_file())


def extension_loads(package: Path) -> bool:
    import torch

    candidates = list(package.glob("_C*.so"))
    try:
        return bool(candidates) and torch.ops.load_library(str(candidates[0])) is None
    except (OSError, RuntimeError):
        return False


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("cpu_torchvision: torchvision is not installed", file=sys.stderr)
        return 2
    package = Path(next(iter(spec.submodule_search_locations)))
    site = package.parent
    if extension_loads(package):
        print(f"cpu_torchvision: {package} has a loadable CPU extension: kept")
    else:
        removed = [*package.glob("*.so"), *(site / "torchvision.libs").glob("*.so*")]
        for path in removed:
            path.unlink()
        (site / f"{HOOK_MODULE}.py").write_text(HOOK_SOURCE)
        (site / f"{HOOK_MODULE}.pth").write_text(f"import {HOOK_MODULE}\n")
        print(f"cpu_torchvision: torchvision's extension needs CUDA: removed {len(removed)} files "
              f"({', '.join(p.name for p in removed)}), schemas declared by dakd_core.compat on import")
    left = cuda_libraries(Path(sysconfig.get_paths()["data"]))
    if left:
        print("cpu_torchvision: CUDA libraries in the CPU image:\n  " + "\n  ".join(map(str, left)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
