"""A bare PyTorch training loop on the built-in pair: the reference the dakd stages are checked against.

No dakd training code: scenes are rendered in memory (`dakd_core.data.synth.render_sample`), labels
mapped to train ids, a registered network trained with AdamW + cosine + horizontal flips, and
target/source val mIoU computed from one confusion matrix. It answers "what does this network
reach on this data with a plain loop" (source-only, with photometric augmentation, or trained on
labelled *target* images: the oracle, an upper bound for adaptation), so a pipeline stage that
lands far below it has a bug, and a method that lands above the oracle is suspicious.

    python benchmarks/bare_loop.py --model swiftnet_tiny --train-on source --iters 800 --seeds 0,1,2
    python benchmarks/bare_loop.py --model swiftnet_tiny --train-on target --shift 0.6   # the oracle
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from dakd_core.data.synth import DEFAULT_SHIFT, render_sample
from dakd_core.data.transforms import normalize
from dakd_core.labels import IGNORE_INDEX, NUM_CLASSES, to_train_ids
from dakd_core.models import create_model


def render_set(domain: str, split: str, n: int, size, shift: float, layout: str, seed: int = 0):
    """(N,3,H,W) float normalised images and (N,H,W) long train-id labels."""
    images, labels = [], []
    for i in range(n):
        rgb, label_ids = render_sample(domain, size, seed, split, i, shift=shift, target_layout=layout)
        images.append(normalize(rgb))
        labels.append(torch.from_numpy(to_train_ids(label_ids, "cityscapes").astype(np.int64)))
    return torch.stack(images), torch.stack(labels)


def photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image random brightness, contrast and per-channel gain on normalised images."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    gain = 0.7 + 0.6 * r(n, 3, 1, 1)
    contrast = 0.6 + 0.8 * r(n, 1, 1, 1)
    bias = 0.8 * (r(n, 3, 1, 1) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast * gain + mean + bias


@torch.no_grad()
def miou(model, images, labels, batch: int = 16) -> float:
    model.eval()
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for i in range(0, len(images), batch):
        logits = model(images[i:i + batch]).main
        pred = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
        y = labels[i:i + batch]
        keep = y != IGNORE_INDEX
        cm += torch.bincount(y[keep] * NUM_CLASSES + pred[keep], minlength=NUM_CLASSES**2).view(NUM_CLASSES, -1)
    model.train()
    inter = cm.diag().double()
    union = cm.sum(0).double() + cm.sum(1).double() - inter
    present = cm.sum(1) > 0
    return float((inter[present] / union[present]).mean())


def train_one(args, seed: int, data: dict) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = create_model(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.iters) / args.iters)))
    x_all, y_all = data["train"]
    start = time.perf_counter()
    for step in range(args.iters):
        idx = torch.randint(len(x_all), (args.batch,), generator=gen)
        x, y = x_all[idx], y_all[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        if args.photometric:
            x = photometric(x, gen)
        out = model(x)
        loss = sum(w * F.cross_entropy(F.interpolate(o, size=y.shape[-2:], mode="bilinear", align_corners=False), y,
                                       ignore_index=IGNORE_INDEX) for w, o in ((1.0, out.main), (0.1, out.aux)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    return {"seed": seed, "source_val": miou(model, *data["source_val"]), "target_val": miou(model, *data["target_val"]),
            "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="swiftnet_tiny")
    p.add_argument("--train-on", choices=("source", "target"), default="source")
    p.add_argument("--size", default="128x64", help="WxH")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-val", type=int, default=48)
    p.add_argument("--shift", type=float, default=DEFAULT_SHIFT, help="target appearance shift (dakd synth --shift)")
    p.add_argument("--target-layout", default="source", choices=("source", "camera"))
    p.add_argument("--iters", type=int, default=800)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--photometric", action="store_true", help="random brightness / contrast / channel gains")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    look = dict(shift=args.shift, layout=args.target_layout)
    data = {
        "train": render_set(args.train_on, "train", args.n_train, (w, h), **look),
        "source_val": render_set("source", "val", args.n_val, (w, h), **look),
        "target_val": render_set("target", "val", args.n_val, (w, h), **look),
    }
    runs = [train_one(args, int(s), data) for s in args.seeds.split(",")]
    summary = {"args": vars(args), "runs": runs}
    for key in ("source_val", "target_val"):
        values = [100 * r[key] for r in runs]
        summary[key] = {"mean": statistics.mean(values), "std": statistics.pstdev(values)}
        print(f"{key:>10} mIoU %: {summary[key]['mean']:.1f} +- {summary[key]['std']:.1f}  "
              f"(seeds: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"{args.model} trained on {args.train_on}, shift {args.shift}, {args.iters} it, "
          f"{statistics.mean(r['seconds'] for r in runs):.0f} s/seed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
