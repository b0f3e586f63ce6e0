"""dakd promote: move the champion alias to the challenger if it beats the champion."""

from __future__ import annotations

NAME = "promote"
HELP = "promote the challenger to champion if it beats the champion by --min-gain on the same manifest"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--metric", default="miou", help="version tag compared (higher is better)")
    p.add_argument("--min-gain", type=float, default=0.0, help="required gain, in the tag's units (fractions)")
    p.add_argument("--version", help="promote this version instead of the challenger alias")


def run(args) -> int:
    from dakd_core.errors import ConfigError
    from dakd_core.registry import promote

    if args.min_gain < 0:
        raise ConfigError(f"--min-gain must be >= 0, got {args.min_gain}")
    result = promote(args.model, args.metric, args.min_gain, args.version)
    print(f"{result.name} v{result.challenger}: {result.decision} ({result.reason}); champion v{result.champion}")
    return 0
