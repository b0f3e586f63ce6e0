"""One training step (forward, CE-like loss on both heads, backward, AdamW step) of a network in the
default NCHW layout and in channels-last (NHWC) images + weights, the layout dakd's training stages
use (dakd_core.train.engine.channels_last). Both measured in one run, same thread count.

    .venv/bin/python benchmarks/bench_layout.py --models swiftnet_tiny swiftnet_thin --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time


def step_seconds(name: str, channels_last: bool, batch: int, size: tuple[int, int], steps: int) -> float:
    import torch

    from dakd_core.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=19).train()
    x = torch.randn(batch, 3, *size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for i in range(steps + 3):  # 3 warm-up steps (allocator, oneDNN primitive cache)
        if i == 3:
            start = time.perf_counter()
        out = model(x)
        loss = out.main.float().mean() + out.aux.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def step_parser(description: str) -> argparse.ArgumentParser:
    """The options of the training-step benchmarks: networks, threads, batch and input size."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", nargs="+", default=["swiftnet_tiny", "swiftnet_thin"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"))
    return p


def main(argv=None) -> int:
    p = step_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"| network | NCHW s/step | NHWC s/step | NHWC / NCHW |  (batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"{args.threads} thread(s))")
    print("|---|---:|---:|---:|")
    for name in args.models:
        nchw = step_seconds(name, False, args.batch, tuple(args.size), args.steps)
        nhwc = step_seconds(name, True, args.batch, tuple(args.size), args.steps)
        print(f"| {name} | {nchw:.4f} | {nhwc:.4f} | {nhwc / nchw:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
