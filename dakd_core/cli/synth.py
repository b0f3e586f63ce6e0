"""dakd synth: the built-in procedural driving-scene domain pair (GTA5 / Cityscapes / ACDC layouts)."""

from __future__ import annotations

NAME = "synth"
HELP = ("generate the built-in demo data: source (game-like, GTA5 layout) or target (camera-like, "
        "Cityscapes layout; ACDC layout with --weather) driving scenes")


def add_arguments(p) -> None:
    from dakd_core.data.synth import SynthConfig

    look = SynthConfig.model_fields
    # No argparse `choices`/types for domain and size: the config reports bad values naming the field.
    p.add_argument("--out", help="output directory (the dataset root)")
    p.add_argument("--domain", help="source or target")
    p.add_argument("--n", type=int, help="number of images (per condition with --weather)")
    p.add_argument("--size", default="256x128", help="image size WxH (default 256x128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--split", default="train", help="split name: train, val, tune, ... (default train)")
    p.add_argument("--weather", action="store_true",
                   help="target under adverse weather, written in the ACDC layout")
    p.add_argument("--conditions", default="fog,night,rain,snow",
                   help="comma-separated weather conditions with --weather (default fog,night,rain,snow)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--shift", type=float, help=f"{look['shift'].description} (default {look['shift'].default})")
    p.add_argument("--target-layout", help=f"{look['target_layout'].description} (default {look['target_layout'].default})")
    p.add_argument("--preview", metavar="FILE.png",
                   help="instead of a dataset, write a grid of samples of both domains and all conditions")


def run(args) -> int:
    import time

    from dakd_core.data.synth import generate, parse_size, preview
    from dakd_core.errors import ConfigError

    from dakd_core.cli._config_args import require_output_path

    size = parse_size(args.size)
    for flag, path in (("--out", args.out), ("--preview", args.preview)):
        if path is not None:
            require_output_path(path, flag)
    if args.preview:
        print(preview(args.preview, size=size, seed=args.seed))
        return 0
    missing = [flag for flag, v in (("--out", args.out), ("--domain", args.domain), ("--n", args.n)) if v is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or use --preview FILE)")
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    start = time.perf_counter()
    result = generate(args.out, args.domain, args.n, size=size, seed=args.seed, split=args.split,
                      weather=args.weather, conditions=conditions, workers=args.workers, shift=args.shift,
                      target_layout=args.target_layout)
    seconds = time.perf_counter() - start
    print(f"{result.num_images} images in the {result.layout} layout under {result.out_dir} "
          f"({seconds:.1f} s, {result.num_images / max(seconds, 1e-9):.0f} images/s)")
    print(result.info_path)
    return 0
