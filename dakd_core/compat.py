"""Make timm importable next to a torchvision wheel whose C++ extension cannot load.

timm imports torchvision at import time. The registry's torchvision wheels are CUDA builds; with
the local CPU torch their extension library fails to load, and torchvision's import then dies in
`torchvision/_meta_registrations.py`, which registers fake kernels for `torchvision::nms` and
`torchvision::qnms` and so needs those operators to exist.

`ensure_torchvision_ops()` first tries to load torchvision's own extension (exactly what
`import torchvision` would do). Only if that fails, and the operators are still missing, does it
define the two operator *schemas* through `torch.library` so the import succeeds. No kernel is
registered: calling `torchvision.ops.nms` without the real extension still fails loudly, which is
right - segmentation never calls it. On an image with a working torchvision this module changes
nothing. Import it before timm (dakd_core.models does).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

# Schemas as torchvision declares them (csrc/ops/nms.cpp); the fake kernels torchvision registers
# at import time need exactly these signatures.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# torch.library.Library deregisters its definitions when garbage-collected: keep it alive.
_LIBRARY: torch.library.Library | None = None
# What ensure_torchvision_ops() did: "present", "extension", "schemas" or "no-torchvision".
STATE: str | None = None


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _load_torchvision_extension() -> bool:
    """Load torchvision's `_C` library the way torchvision does, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = Path(folder) / f"_C{suffix}"
            if candidate.is_file():
                try:
                    torch.ops.load_library(str(candidate))
                    return True
                except (OSError, ImportError, RuntimeError):
                    return False
    return False


def ensure_torchvision_ops() -> str:
    """Guarantee that `import torchvision` can succeed; returns what had to be done (see STATE)."""
    global _LIBRARY, STATE
    if STATE is not None:
        return STATE
    if all(_op_exists(n) for n in _SCHEMAS):
        STATE = "present"
    elif "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        STATE = "no-torchvision"
    elif _load_torchvision_extension() and all(_op_exists(n) for n in _SCHEMAS):
        STATE = "extension"
    else:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _SCHEMAS.items():
            if not _op_exists(name):
                _LIBRARY.define(schema)
        STATE = "schemas"
    return STATE


ensure_torchvision_ops()
