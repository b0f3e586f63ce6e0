"""`dakd evaluate` over every checkpoint of one seed of a finished `dakd bench results` run, with
plots and calibration statistics (the CLI's default) and without them (what the bench's own
evaluation uses), in alternating rounds in one process, same thread count. Prints the seconds of
each round and checks that both give the same mIoU.

    .venv/bin/python benchmarks/bench_evaluate.py --bench-out .dakd/bench-results --seed 0 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def checkpoints(bench_out: Path, seed: int) -> dict[str, str]:
    """{stage name: best checkpoint URI} of every finished stage of `seed` under a bench work dir."""
    found = sorted((bench_out / "store" / "runs" / f"seed{seed}").glob("*/result.json"))
    if not found:
        raise SystemExit(f"no finished stages under {bench_out}/store/runs/seed{seed}: run `dakd bench results` first")
    return {p.parent.name: json.loads(p.read_text())["best_checkpoint_uri"] for p in found}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench-out", type=Path, required=True, help="the --out directory of `dakd bench results`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="results", help="the run's --size (its resolution)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("DAKD_NO_PROGRESS", "1")
    import torch

    from dakd_core.bench.results import PRESETS
    from dakd_core.evaluation.evaluate import EvalConfig, run

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.size]
    models = [f"{k}={u}" for k, u in checkpoints(args.bench_out, args.seed).items()]
    manifest = (args.bench_out / "store" / "datasets" / "tgt" / "val" / "manifest.parquet").resolve().as_uri()
    seconds: dict[str, list[float]] = {"full": [], "lean": []}
    mious: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in ("full", "lean"):
                on = variant == "full"
                cfg = EvalConfig(models=models, manifest=manifest, out=f"{tmp}/{variant}{r}", device="cpu",
                                 resolution=(preset.height, preset.width), grid_samples=0, log_mlflow=False,
                                 figures=on, calibration=on)
                start = time.perf_counter()
                result = run(cfg).metrics["models"]
                seconds[variant].append(time.perf_counter() - start)
                mious[variant] = {k: m["miou"] for k, m in result.items()}
    if mious["full"] != mious["lean"]:
        raise SystemExit("the two settings gave different mIoU")
    print(f"{len(models)} models, {args.threads} thread(s), target val of seed {args.seed}")
    for variant, label in (("full", "plots + calibration"), ("lean", "mIoU and confusion only")):
        print(f"  {label:26s}" + "  ".join(f"{s:6.1f} s" for s in seconds[variant]))
    print(f"  ratio lean / full: {sum(seconds['lean']) / sum(seconds['full']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
