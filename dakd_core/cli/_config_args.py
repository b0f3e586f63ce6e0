"""Command-line flags generated from a StrictConfig's fields, so a flag can never drift from the
field it sets: `--field-name VALUE` per field (tuples take one value per element, booleans are
`--flag/--no-flag`), plus `--config FILE.yaml`. Unset flags stay None and do not override YAML.
"""

from __future__ import annotations

import argparse
import typing
from typing import Literal

from dakd_core.config import StrictConfig, build_config, without_none


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[StrictConfig]) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config fields (flags override it)")
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = without_none(info.annotation)
        default = info.default if not info.is_required() else "required"
        # the field's description is the one text of a parameter: CLI help, pipeline form, docs
        help_text = f"{info.description} (default: {default})" if info.description else f"(default: {default})"
        if annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(annotation) is tuple:
            args = typing.get_args(annotation)
            # Constrained elements (config.HW = tuple[PositiveInt, PositiveInt]) parse as their
            # base type; the config then reports a bad value naming the field.
            element = typing.get_args(args[0])[0] if typing.get_origin(args[0]) is typing.Annotated else args[0]
            parser.add_argument(flag, dest=name, nargs=len(args), type=element, default=None, help=help_text)
        elif typing.get_origin(annotation) is Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(annotation), default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=annotation, default=None, help=help_text)


def config_from_args(cls: type[StrictConfig], args: argparse.Namespace):
    overrides = {name: getattr(args, name) for name in cls.model_fields}
    return build_config(cls, args.config, **overrides)


def require_output_path(path: str, flag: str) -> None:
    """ConfigError naming the flag and value when a local output path (file or directory) cannot
    be created: a non-directory on its way, or an unwritable directory. Creates nothing: checked
    before any work, so a refused command leaves nothing behind."""
    import os
    from pathlib import Path

    from dakd_core.errors import ConfigError

    probe = Path(path).absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != Path(path).absolute() and not probe.is_dir():
        raise ConfigError(f"{flag} {path!r}: {probe} is not a directory")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path!r}: directory {probe} is not writable")
