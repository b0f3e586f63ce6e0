"""Name -> network constructor, timm style.

    @register_model("deeplabv2_resnet18")
    def deeplabv2_resnet18(num_classes=19, backbone_weights=None) -> SegmentationModel: ...

Configs, checkpoints and the CLI refer to networks by these names only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dakd_core.errors import ConfigError

_MODELS: dict[str, Callable] = {}


def register_model(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering `fn(num_classes, backbone_weights)` under `name` (unique)."""

    def decorate(fn: Callable) -> Callable:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        return fn

    return decorate


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 19, backbone_weights: str | Path | None = None):
    """Build the registered network `name` (random init, or the local backbone weights file)."""
    try:
        build = _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; known models: {', '.join(list_models())}") from None
    model = build(num_classes=num_classes, backbone_weights=backbone_weights)
    model.name = name
    return model
