"""Checkpoints: one torch.save'd dict of plain types, written atomically to any store URI.

Format (docs/ARCHITECTURE.md):
    {"format": "dakd-checkpoint/1", "model_name": str, "num_classes": int,
     "model": state_dict, "step": int, "config": dict, ...extra plain entries}
Only tensors, numbers, strings, bools, None, lists/tuples and str-keyed dicts are allowed, so
`torch.load(weights_only=True)` can read it back without executing pickled code; tensors must be
finite (a NaN/inf checkpoint is refused, nothing is written).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import nn

from dakd_core.errors import DataError, TrainingError
from dakd_core.models.registry import create_model
from dakd_core.storage import read_bytes, write_bytes

FORMAT = "dakd-checkpoint/1"
REQUIRED_KEYS = ("format", "model_name", "num_classes", "model")
_PLAIN_SCALARS = (torch.Tensor, int, float, str, bool, type(None))


def make_payload(model: nn.Module, step: int = 0, config: dict | None = None, **extra: Any) -> dict:
    """The checkpoint dict for a registered model (state dict moved to CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "model_name": model.name,
        "num_classes": int(model.num_classes),
        "model": state,
        "step": int(step),
        "config": dict(config or {}),
        **extra,
    }


def _nonfinite(tensor: torch.Tensor) -> int:
    """How many NaN/inf values a tensor holds (0 for integer and bool tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    finite = torch.isfinite(tensor)
    return 0 if bool(finite.all()) else tensor.numel() - int(finite.sum())


def _check_plain(value: Any, where: str) -> None:
    """Refuse what `weights_only=True` could not load back, and non-finite tensors.

    A NaN/inf weight saved as `last.pt` would make the NaN guard's "last good checkpoint" a bad
    one, and a resume or a later stage would start from it; refusing it here keeps every stored
    checkpoint finite whichever loop (or helper) writes it.
    """
    if isinstance(value, torch.Tensor):
        bad = _nonfinite(value)
        if bad:
            raise TrainingError(
                f"checkpoint entry {where} holds {bad} non-finite value(s) (NaN/inf) of {value.numel()}"
            )
        return
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TrainingError(f"checkpoint entry {where} has a non-string key {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise TrainingError(
        f"checkpoint entry {where} is a {type(value).__name__}; only tensors and plain types "
        "(numbers, str, bool, None, list, dict) can be loaded with weights_only=True"
    )


def save_checkpoint(target, payload: dict, key: str | None = None) -> str:
    """Serialise `payload` and write it atomically; returns the checkpoint URI.

    `target` is a full URI (`file:///...`, `/abs/path`, `s3://...`), or an ObjectStore plus `key`.
    """
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise TrainingError(f"checkpoint payload lacks {missing}")
    if payload["format"] != FORMAT:
        raise TrainingError(f"checkpoint payload format is {payload['format']!r}, expected {FORMAT!r}")
    try:
        _check_plain(payload, "payload")
    except TrainingError as e:
        where = target.url(key) if hasattr(target, "url") and key is not None else str(target)
        raise TrainingError(f"refusing to save checkpoint {where} (step {payload.get('step')}), nothing "
                            f"written: {e}") from None
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    if hasattr(target, "put_bytes"):
        if key is None:
            raise TrainingError(f"save_checkpoint into store {target.uri} needs a key")
        return target.put_bytes(key, buffer.getvalue())
    if key is not None:
        raise TrainingError("save_checkpoint: pass a key only together with an ObjectStore")
    write_bytes(str(target), buffer.getvalue())
    return str(target)


def load_checkpoint(uri: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; anything else is a DataError naming `uri`."""
    data = read_bytes(uri)
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, random bytes: all "not a checkpoint"
        raise DataError(f"{uri} is not a readable dakd checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(f"{uri} is not a dakd checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise DataError(f"checkpoint {uri} lacks {missing}")
    # save_checkpoint never writes NaN/inf weights; a file that has them (an older dakd, another
    # tool) would only surface as a NaN loss at step 1 with nothing pointing at the file.
    for name, tensor in payload["model"].items() if isinstance(payload["model"], dict) else ():
        bad = _nonfinite(tensor) if isinstance(tensor, torch.Tensor) else 0
        if bad:
            raise DataError(f"checkpoint {uri} holds non-finite values in model.{name} ({bad} NaN/inf of "
                            f"{tensor.numel()}): refusing to start from it")
    return payload


def load_state_into(model: nn.Module, payload: dict, uri: str = "<payload>") -> None:
    """Strictly load a checkpoint's weights into an existing model of the same network."""
    if payload["model_name"] != model.name:
        raise TrainingError(
            f"checkpoint {uri} holds network '{payload['model_name']}', cannot load it into '{model.name}'"
        )
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as e:
        raise DataError(
            f"checkpoint {uri} does not fit network '{model.name}' "
            f"(num_classes {payload['num_classes']} vs {model.num_classes}): {str(e)[:400]}"
        ) from None


def load_model(
    uri: str, map_location: str | torch.device = "cpu", expected_model: str | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the registered network named in the checkpoint and load its weights strictly.

    `expected_model`: the network the caller configured; a checkpoint of another network is a
    TrainingError naming both. Returns (model on `map_location`, payload).
    """
    payload = load_checkpoint(uri, map_location=map_location)
    name = payload["model_name"]
    if expected_model is not None and expected_model != name:
        raise TrainingError(f"checkpoint {uri} holds network '{name}', but '{expected_model}' was configured")
    model = create_model(name, num_classes=int(payload["num_classes"]))
    load_state_into(model, payload, uri)
    return model.to(map_location), payload


def sha256_of_checkpoint(uri: str) -> str:
    """Content hash of the stored checkpoint bytes (identifies a teacher for the cache)."""
    return hashlib.sha256(read_bytes(uri)).hexdigest()
