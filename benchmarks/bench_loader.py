"""Training data loading: images/s of the stage's batch stream with 1..N DataLoader workers.

The stream is what every training stage reads (`engine.image_stream`: store PNG reads, decode,
random scale, crop, flip, normalise, label to long) over a split of built-in scenes stored at
`--size`. The first batch of each run (worker start-up) and those prefetched meanwhile are excluded; each worker count is timed
`--repeats` times in turn with the others and its best rate kept.

Reported: the speed-up from 1 to N workers next to the cores this process may use (the ideal is
min(N, cores)); benchmarks/gpu_suite.py sets the rate beside what a GPU training step consumes.

    .venv/bin/python benchmarks/bench_loader.py [--size 512 1024] [--crop 512 1024] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("DAKD_NO_PROGRESS", "1")

import torch  # noqa: E402

from dakd_core.bench.data import write_split  # noqa: E402
from dakd_core.bench.scratch import scratch_dir  # noqa: E402
from dakd_core.data.dataset import ManifestDataset  # noqa: E402
from dakd_core.train import engine  # noqa: E402


def stream_rate(manifest: str, crop: tuple[int, int], batch: int, workers: int, batches: int,
                device: torch.device) -> float:
    """Images/s of `batches` batches of the training stream after its first one (start-up) and the
    ones its workers prefetched meanwhile (DataLoader's default prefetch_factor, 2 per worker):
    those arrive ready-made and would inflate the rate."""
    dataset = ManifestDataset(manifest, crop=crop, train=True, with_labels=True, seed=0)
    stream = engine.BatchStream(dataset, batch, 0, engine.Dist(0, 1, device), workers, "bench")
    for _ in range(1 + 2 * workers):
        stream.next()
    start = time.perf_counter()
    for _ in range(batches):
        stream.next()
    return batches * batch / (time.perf_counter() - start)  # the stream's workers end with it


def measure(argv=None) -> dict:
    """Run the benchmark, print its table and return {"rates": {workers: img/s}, "cores", ...}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"), help="stored images")
    ap.add_argument("--crop", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    if min(args.workers) < 1:
        ap.error("--workers: counts must be >= 1 (0 loads in the training process: nothing to scale)")
    device = engine.default_device()
    counts = sorted(set(args.workers))
    best = dict.fromkeys(counts, 0.0)
    with scratch_dir("dakd-bench-loader-") as tmp:
        manifest = write_split(tmp.as_uri(), args.images, tuple(args.size))
        for _ in range(args.repeats):
            for workers in counts:
                best[workers] = max(best[workers], stream_rate(manifest, tuple(args.crop), args.batch, workers,
                                                               args.batches, device))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"training stream, {args.size[0]}x{args.size[1]} images, crop {args.crop[0]}x{args.crop[1]}, "
          f"batch {args.batch}, {cores} cores")
    for workers in counts:
        print(f"  {workers:>3} worker(s) {best[workers]:8.1f} img/s  x{best[workers] / best[counts[0]]:.2f}")
    return {"rates": best, "cores": cores, "size": list(args.size), "crop": list(args.crop), "batch": args.batch}


def main(argv=None) -> int:
    measure(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
