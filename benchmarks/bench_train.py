"""Training throughput: a `dakd pretrain` step vs a bare PyTorch loop doing the same work.

Both sides train the same network from the same seed on the same images (batch, crop), with the
stage's optimiser and schedule (the network's recipe), CE on the main and aux heads and, on CUDA,
float16 autocast with a GradScaler (dakd's AMP). Both read and decode the same PNG files every
step through a DataLoader with the same worker count (the limit: a minimal torch Dataset, PIL
decode, normalise, random flip, channels-last layout; reading the data is part of a step's work, and on 2 cores a
DataLoader worker takes cycles from the training threads); dakd adds its store layer, scale/crop
augmentation, the NaN guard and MLflow logging (unless --no-mlflow). Both are timed over the same steps, from the end of
step `--warmup` + 1 to the end of the last (start-up and dakd's final checkpoint are not steps; on
dakd's side the gaps between the engine's end-of-step stamps). Rates vary 20-30% run to
run on shared machines, so both are measured in one run, alternating bare / dakd / bare, and the
ratio is reported (goal 0.9 to 1.2).

    .venv/bin/python benchmarks/bench_train.py --models deeplabv2_tiny deeplabv2_resnet18 --iters 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("DAKD_NO_PROGRESS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dakd_core.bench.data import write_split  # noqa: E402
from dakd_core.config import build_config  # noqa: E402
from dakd_core.losses import segmentation_loss  # noqa: E402
from dakd_core.models import create_model  # noqa: E402
from dakd_core.train import engine, pretrain  # noqa: E402
from dakd_core.train.configs import PretrainConfig  # noqa: E402


class PngPairs(torch.utils.data.Dataset):
    """The manifest's (image, label) PNGs decoded with PIL: the least a training step must read."""

    def __init__(self, manifest_uri: str):
        from dakd_core.data.manifest import read_manifest

        local = lambda uri: uri.removeprefix("file://")  # noqa: E731  (write_split's store is a local directory)
        self.rows = [(local(r["image_uri"]), local(r["label_uri"])) for r in read_manifest(manifest_uri)]
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image_path, label_path = self.rows[i]
        image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)
        label = torch.from_numpy(np.array(Image.open(label_path), dtype=np.int64))
        image = (image.float() / 255 - self.mean) / self.std
        if torch.rand(()) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


def bare_rate(cfg: PretrainConfig, device, warmup: int = 0) -> float:
    """Steps/s of the plain loop: the same PNGs through a DataLoader with the stage's worker count,
    the stage's optimiser, schedule and (on CUDA) AMP with a GradScaler. Timed like dakd's side
    (`dakd_rate`): from the end of step `warmup + 1` to the end of the last."""
    torch.manual_seed(cfg.seed)
    # channels-last images and weights: the fastest layout known for these convolutions (dakd's too)
    model = create_model(cfg.model, num_classes=cfg.num_classes).to(device, memory_format=torch.channels_last).train()
    opt = engine.build_optimizer(cfg, model)
    sched = engine.lr_schedule(opt, cfg.iterations, cfg.schedule, cfg.poly_power, cfg.warmup_iterations)
    amp = engine.amp_enabled(cfg, device)  # dakd's steps run under AMP on CUDA: so does the limit
    scaler = engine.make_scaler(device, amp)
    loader = torch.utils.data.DataLoader(PngPairs(cfg.source_manifest), batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches, step, start = iter(loader), 0, 0.0
    while step < cfg.iterations:
        try:
            image, label = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        image = image.to(device, memory_format=torch.channels_last, non_blocking=True)
        label = label.to(device, non_blocking=True)
        with engine.autocast(device, amp):
            out = model(image)
        loss = segmentation_loss(out.main, label) + cfg.aux_weight * segmentation_loss(out.aux, label)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        if step == warmup + 1:  # the clock starts once the warm-up steps and this one are done
            sync()
            start = time.perf_counter()
    sync()
    return (cfg.iterations - warmup - 1) / (time.perf_counter() - start)


def dakd_rate(cfg: PretrainConfig, warmup: int = 0) -> float:
    """Steps/s of `dakd pretrain` from its step gaps after the warm-up (bench_distill.step_gaps:
    stamped at the engine's end_step), so its start-up and final checkpoint writes (1.1 GB
    fsync'd for R101 with its SGD momentum) are not counted against the steps."""
    from dakd_core.bench.perf import load_benchmark

    gaps = load_benchmark("bench_distill").step_gaps(pretrain.run, cfg)[warmup:]
    return len(gaps) / sum(gaps)


def measure(argv=None) -> dict:
    """Run the benchmark, print its table and return {"device", "batch", "size", "rows": [...]}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deeplabv2_tiny", "deeplabv2_resnet18"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0, help="steps before the clock starts (cuDNN autotuning, caches)")
    ap.add_argument("--no-mlflow", dest="log_mlflow", action="store_false",
                    help="dakd's steps without their MLflow stage run (log_mlflow off; a machine without MLflow)")
    args = ap.parse_args(argv)
    if args.iters < args.warmup + 2:
        ap.error(f"--iters {args.iters}: at least --warmup + 2 = {args.warmup + 2} steps (one timed step gap)")
    from dakd_core.bench.scratch import scratch_dir

    with scratch_dir("dakd-bench-train-") as tmp:
        return _measure_in(tmp, args)


def _measure_in(tmp: Path, args) -> dict:
    device = engine.default_device()
    manifest = write_split(tmp.as_uri() + "/store", 8, tuple(args.size))
    print(f"device {device}, batch {args.batch}, crop {args.size[0]}x{args.size[1]}, {args.iters} iterations, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'network':<24}{'bare img/s':>12}{'dakd img/s':>12}{'ratio':>8}")
    rows = []
    for name in args.models:
        cfg = build_config(
            PretrainConfig, None, model=name, source_manifest=manifest, iterations=args.iters,
            batch_size=args.batch, crop=list(args.size), source_resize=list(args.size), scale_range=[1.0, 1.0],
            num_workers=args.workers, checkpoint_every=args.iters, eval_every=args.iters, log_every=10,
            log_mlflow=args.log_mlflow, out=(tmp / name).as_uri(),
        )
        bare = [bare_rate(cfg, device, args.warmup)]
        dakd = dakd_rate(cfg, args.warmup)
        bare.append(bare_rate(cfg, device, args.warmup))
        bare_mean = sum(bare) / len(bare)
        print(f"{name:<24}{bare_mean * args.batch:>12.2f}{dakd * args.batch:>12.2f}{dakd / bare_mean:>8.2f}")
        rows.append({"model": name, "bare_img_s": bare_mean * args.batch, "dakd_img_s": dakd * args.batch,
                     "dakd_over_bare": dakd / bare_mean})
    return {"device": str(device), "batch": args.batch, "size": list(args.size), "warmup": args.warmup,
            "timed_steps": args.iters - args.warmup - 1, "mlflow": args.log_mlflow, "rows": rows}


def main(argv=None) -> int:
    measure(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
