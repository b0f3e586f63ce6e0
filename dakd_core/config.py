"""Strict configuration: every stage's settings are one pydantic model.

Unknown keys, wrong types and out-of-range values are errors that name the field. A stage config
is built from (lowest to highest precedence) its defaults, an optional YAML file, and explicit
overrides (CLI flags or KFP parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dakd_core.errors import ConfigError

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base of every config: no unknown keys, no silent type coercion, validated on assignment."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, frozen=False)


def _format_validation_error(cls: type, err: ValidationError, source: str) -> str:
    lines = [f"invalid {cls.__name__} ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  field '{field}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def build_config(cls: type[C], yaml_path: str | Path | None = None, **overrides: Any) -> C:
    """Defaults < YAML file < overrides. Overrides whose value is None are ignored (unset flags)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        data.update(loaded)
        source = str(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # JSON-mode validation: YAML/CLI give lists where tuples are declared, ints where floats are.
        return cls.model_validate_json(_to_json(data))
    except ValidationError as e:
        raise ConfigError(_format_validation_error(cls, e, source)) from None


def _to_json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, default=str)
