"""Strict configuration: every stage's settings are one pydantic model.

Unknown keys, wrong types, out-of-range and non-finite (NaN, +-inf) values are errors that name the
field. A stage config is built from (lowest to highest precedence) its defaults, an optional YAML
file, and explicit overrides (CLI flags or KFP parameters). The YAML file must be a UTF-8 text file
holding one mapping without duplicate keys (`load_yaml`).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from dakd_core.errors import ConfigError

C = TypeVar("C", bound="StrictConfig")
# Upper bound of every learning rate. Useful rates are < 1 (SGD 2.5e-4, AdamW 1e-3..1e-2, the SFDA
# generator 0.1); 1e30 passed validation and only failed as a NaN loss after a full startup, and a
# mistyped exponent (`1e2` for `1e-2`) would train garbage for hours before the guard fires.
MAX_LR = 10.0
# An (H, W) image size: both sides > 0 (a 0x0 resolution would reach the resize as a traceback).
HW = tuple[PositiveInt, PositiveInt]


class StrictConfig(BaseModel):
    """Base of every config: no unknown keys, no silent type coercion, validated on assignment.

    `allow_inf_nan=False`: YAML reads `.inf`/`.nan` as floats and a `gt=0` bound lets +inf through,
    so without it `lr: .inf` would train until the first NaN loss. It covers every float of every
    subclass, nested ones (tuples, dicts, sub-configs) included.
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, frozen=False,
                              allow_inf_nan=False)


def without_none(annotation):
    """`T | None` -> T (an optional field's type where a value is given: a CLI flag, a form field)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice.

    PyYAML silently keeps the last value, so `lr: 0.01` followed further down by `lr: 1.0` would
    train with 1.0 and nobody would notice which of the two lines counted.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` then overriding a merged key is allowed
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:
                    continue  # unhashable key: SafeLoader reports it itself
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


def load_yaml(path: str | Path) -> Any:
    """The YAML document in `path`; ConfigError naming the file (and key) when it is missing, a
    directory, unreadable, not UTF-8 text (a binary file), not YAML, or repeats a mapping key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not a YAML text file: byte {e.start} (0x{raw[e.start]:02x}) is not UTF-8 "
            "(a binary file?)"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(
            f"config file {path}: duplicate key {e.key!r} (lines {e.first} and {e.second}); "
            "YAML would silently keep only the last value"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None


def format_validation_error(model: str, err: ValidationError, source: str) -> str:
    """One line (the CLI's error contract): each failing field with its message and value."""
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        # a model-level check (no field) has the whole input as its value: its message names what is wrong
        problems.append(f"field '{field}': {e['msg']} (got {e.get('input')!r})" if field else e["msg"])
    return f"invalid {model} ({source}): " + "; ".join(problems)


def build_config(cls: type[C], yaml_path: str | Path | None = None, **overrides: Any) -> C:
    """Defaults < YAML file < overrides. Overrides whose value is None are ignored (unset flags)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if yaml_path is not None:
        path = Path(yaml_path)
        loaded = load_yaml(path)
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
        raise ConfigError(format_validation_error(cls.__name__, e, source)) from None


def _to_json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, default=str)
