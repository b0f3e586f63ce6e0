"""`python -m dakd_core.models`: a Markdown table of every registered network, measured.

Parameter counts always; with `--time`, the median CPU/GPU time of one training step
(forward, CE on both heads, backward, SGD step) per network at `--batch` x 3 x `--size`.
docs/models.md is this command's output.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from dakd_core.models import count_parameters, create_model, list_models
from dakd_core.models.deeplabv2 import VARIANTS

SWIFTNET_ROLES = {"swiftnet_resnet18": "real-time student", "swiftnet_mobilenetv4": "real-time student",
                  "swiftnet_thin": "CPU-scale teacher (stride 2)", "swiftnet_tiny": "CPU-scale student (stride 2)"}


def step_seconds(model: torch.nn.Module, batch: int, size: tuple[int, int], steps: int, device: str) -> float:
    """Median seconds of one SGD step after one warm-up step."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.param_groups(1e-3), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, model.num_classes, (batch, *size), device=device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(x)
        loss = sum(
            torch.nn.functional.cross_entropy(
                torch.nn.functional.interpolate(o, size=size, mode="bilinear", align_corners=False), y
            )
            for o in out
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def table(names: list[str], time_steps: int, batch: int, size: tuple[int, int], device: str) -> str:
    head = "| network | role | backbone | parameters | backbone | heads/decoder | stride main/aux |"
    rule = "|---|---|---|---:|---:|---:|---|"
    if time_steps:
        head += f" step s (batch {batch}, {size[0]}x{size[1]}, {device}) |"
        rule += "---:|"
    rows = [head, rule]
    for name in tqdm(names, desc="models", disable=None):
        model = create_model(name)
        total, backbone = count_parameters(model), count_parameters(model.backbone)
        arch, overrides, role = VARIANTS.get(name, (None, {}, SWIFTNET_ROLES.get(name, "")))
        arch = arch or model.backbone.pretrained_cfg.get("architecture", "?")
        if overrides:  # a narrowed timm layout: say how
            arch += " (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")"
        strides = f"{model.output_strides['main']}/{model.output_strides['aux']}"
        row = f"| `{name}` | {role} | {arch} | {total / 1e6:.2f}M | {backbone / 1e6:.2f}M | {(total - backbone) / 1e6:.2f}M | {strides} |"
        if time_steps:
            row += f" {step_seconds(model, batch, size, time_steps, device):.3f} |"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dakd_core.models", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="subset of networks (default: all)")
    p.add_argument("--time", type=int, default=0, metavar="STEPS", help="also time STEPS training steps")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(list_models())}")
    print(table(names, args.time, args.batch, tuple(args.size), args.device))


if __name__ == "__main__":
    main()
