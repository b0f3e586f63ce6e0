"""Target val mIoU of every `dakd adapt --method` on the built-in synthetic pair, same budget and seed.

One source (pretrain) checkpoint, then adaptsegnet, advent, road, diga and sfda each for the same
number of iterations from it; every result is the final checkpoint's mIoU on the labelled target
val split (no checkpoint selection). Prints a Markdown table and writes results.json.

    .venv/bin/python benchmarks/bench_methods.py --out /tmp/bench_methods
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("DAKD_NO_PROGRESS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from dakd_core.config import build_config  # noqa: E402
from dakd_core.data.dataset import ManifestDataset  # noqa: E402
from dakd_core.data.ingest import IngestConfig, run_ingest  # noqa: E402
from dakd_core.data.synth import generate  # noqa: E402
from dakd_core.models.checkpoint import load_model  # noqa: E402
from dakd_core.train import adapt, engine, pretrain  # noqa: E402
from dakd_core.train.configs import AdaptConfig, PretrainConfig  # noqa: E402

METHODS = ("adaptsegnet", "advent", "road", "diga", "sfda")


def dataset(out: Path, store: str, domain: str, split: str, n: int, size, seed: int, labels: bool) -> str:
    fmt = "gta5" if domain == "source" else "cityscapes"
    root = out / "raw" / f"{domain}_{split}"
    if not root.exists():
        generate(root, domain, n, size=size, seed=seed, split=split, progress=False)
    name = f"{domain}_{split}"
    return run_ingest(build_config(IngestConfig, None, format=fmt, root=str(root), split=split, domain=domain,
                                   store=store, name=name, labels=labels)).manifest_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="deeplabv2_tiny")
    ap.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("W", "H"), help="image W H")
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--pretrain-iterations", type=int, default=300)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlruns.db'}")
    store = (out / "store").as_uri()
    w, h = args.size
    src = dataset(out, store, "source", "train", args.n_train, (w, h), 1, True)
    tgt = dataset(out, store, "target", "train", args.n_train, (w, h), 2, False)
    val = dataset(out, store, "target", "val", args.n_val, (w, h), 3, True)
    hw = [h, w]
    common = dict(model=args.model, crop=hw, source_resize=hw, select_resize=hw, batch_size=args.batch_size,
                  num_workers=0, lr=args.lr, seed=args.seed, checkpoint_every=10_000, eval_every=10_000,
                  log_every=50, source_manifest=src)
    t0 = time.time()
    pre = pretrain.run(build_config(PretrainConfig, None, **common, iterations=args.pretrain_iterations,
                                    out=(out / "pretrain").as_uri()))
    val_set = ManifestDataset(val, train=False, with_labels=True, resize=tuple(hw))
    device = engine.default_device()

    def miou(uri: str) -> float:
        model, _ = load_model(uri)
        return 100 * engine.evaluate_miou(model.to(device), val_set, 19, device, amp=False)

    rows = {"source only": {"miou": miou(pre.last_checkpoint_uri), "seconds": time.time() - t0}}
    print(f"source only: {rows['source only']['miou']:.2f}", flush=True)
    for method in args.methods:
        t0 = time.time()
        overrides = {"batch_size": args.batch_size + args.batch_size % 2} if method == "sfda" else {}  # IPSM halves
        cfg = build_config(AdaptConfig, None, **{**common, **overrides}, method=method, init=pre.last_checkpoint_uri,
                           target_manifest=tgt, target_resize=hw, iterations=args.iterations,
                           out=(out / method).as_uri())
        result = adapt.run(cfg)
        rows[method] = {"miou": miou(result.last_checkpoint_uri), "seconds": time.time() - t0}
        print(f"{method}: {rows[method]['miou']:.2f} ({rows[method]['seconds']:.0f} s)", flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"\n| method | target val mIoU | wall s |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['miou']:.2f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
