"""dakd promote: move the champion alias to the challenger if it beats the champion."""

from __future__ import annotations

NAME = "promote"
HELP = "promote the challenger to champion if it beats the champion by --min-gain on the same manifest"


def add_arguments(p) -> None:
    from dakd_core.registry import PromoteConfig

    fields = PromoteConfig.model_fields
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--metric", help=f"{fields['metric'].description} (default {fields['metric'].default})")
    p.add_argument("--min-gain", type=float,
                   help=f"{fields['min_gain'].description} (default {fields['min_gain'].default})")
    p.add_argument("--version", help="promote this version instead of the challenger alias")


def run(args) -> int:
    from dakd_core.registry import promote

    result = promote(args.model, args.metric, args.min_gain, args.version)
    champion = f"v{result.champion}" if result.champion else "none"
    print(f"{result.name} v{result.challenger}: {result.decision} ({result.reason}); champion {champion}")
    return 0
