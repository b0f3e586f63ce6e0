"""What the training step's kernel choices save on the CPU: cross-entropy on the (pixels, classes)
rows of a channels-last map against the 4-D call, and the fused AdamW update against the loop over
tensors. Whole training steps (forward, CE on both heads at full resolution, backward, AdamW) with
the old and the new choices run in alternating rounds in one process, then each part alone. Then
the source step of source distillation (paradigms a and c), whose main head has two CEs, against
the ground truth and the teacher's pseudo-labels: two calls, or one shared resize and log-softmax
(`segmentation_losses`).

    .venv/bin/python benchmarks/bench_step_kernels.py --models swiftnet_tiny swiftnet_thin swiftnet_mobilenetv4
    .venv/bin/python benchmarks/bench_step_kernels.py --profile swiftnet_thin   # where the rest goes
"""

from __future__ import annotations

import sys
import time


def _ce_4d(logits, labels):
    import torch.nn.functional as F

    logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=255)


def _timed(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def _network_step(name: str, batch: int, size):
    """(model in channels-last, step(loss_fn, optimizer)) on a fixed random batch: one training
    step, forward, CE on both heads at full resolution, backward, optimiser update."""
    import torch

    from dakd_core.models import create_model
    from dakd_core.train import engine

    torch.manual_seed(0)
    model = engine.channels_last(create_model(name, num_classes=19), torch.device("cpu")).train()
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 19, (batch, *size))

    def step(loss_fn, opt, main_loss=None):
        out = model(x)
        main = loss_fn(out.main, y) if main_loss is None else main_loss(out.main)
        loss = main + 0.4 * loss_fn(out.aux, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, y, step


def _alternating(steps: list, rounds: int) -> list[float]:
    """Mean seconds per call of each step function, timed in `rounds` alternating rounds of 3
    calls after one warm-up round (allocator, oneDNN primitive cache)."""
    total = [0.0] * len(steps)
    for r in range(rounds + 1):
        for i, fn in enumerate(steps):
            seconds = _timed(fn, 3)
            if r:
                total[i] += seconds
    return [t / rounds for t in total]


def source_distill_pair(name: str, batch: int, size, rounds: int) -> tuple[float, float]:
    """Seconds per training step whose main head has CE against the labels and against pseudo-labels
    (a quarter of them differing): (two `segmentation_loss` calls, one `segmentation_losses`)."""
    import torch

    from dakd_core.losses import segmentation_loss, segmentation_losses
    from dakd_core.train import engine

    model, y, step = _network_step(name, batch, size)
    pseudo = torch.where(torch.rand(y.shape) < 0.25, torch.randint(0, 19, y.shape), y)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, **engine.fused_update(model))

    def two_calls(main):
        return segmentation_loss(main, y) + segmentation_loss(main, pseudo)

    def shared(main):
        return sum(segmentation_losses(main, [y, pseudo]))

    old, new = _alternating([lambda: step(segmentation_loss, opt, two_calls),
                             lambda: step(segmentation_loss, opt, shared)], rounds)
    return old, new


def step_pair(name: str, batch: int, size, rounds: int) -> tuple[float, float]:
    """Seconds per training step: (4-D CE + AdamW loop, rows CE + fused AdamW), alternating rounds."""
    import torch

    from dakd_core.losses import segmentation_loss
    from dakd_core.train import engine

    model, _, step = _network_step(name, batch, size)
    # lr 0: both variants keep training the same weights, so neither sees different activations.
    loop = torch.optim.AdamW(model.parameters(), lr=0.0)
    fused = torch.optim.AdamW(model.parameters(), lr=0.0, **engine.fused_update(model))
    old, new = _alternating([lambda: step(_ce_4d, loop), lambda: step(segmentation_loss, fused)], rounds)
    return old, new


def ce_pair(shape, size, reps: int) -> tuple[float, float]:
    """Seconds per CE forward + backward of channels-last logits `shape` against labels `size`."""
    import torch

    from dakd_core.losses import segmentation_loss

    z = torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0], *size))
    out = []
    for fn in (_ce_4d, segmentation_loss):
        _timed(lambda: fn(z, y).backward(), 3)
        out.append(_timed(lambda: fn(z, y).backward(), reps))
    return out[0], out[1]


def adamw_pair(name: str, reps: int) -> tuple[float, float]:
    import torch

    from dakd_core.models import create_model
    from dakd_core.train import engine

    model = create_model(name, num_classes=19)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    out = []
    for kwargs in ({}, engine.fused_update(model)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **kwargs)
        _timed(opt.step, 3)
        out.append(_timed(opt.step, reps))
    return out[0], out[1]


def profile_step(name: str, batch: int, size, steps: int = 10) -> None:
    """torch.profiler's table of the new training step's ops, grouped by input shape (what takes
    the time that the kernel choices above do not touch)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from dakd_core.losses import segmentation_loss
    from dakd_core.train import engine

    model, _, step = _network_step(name, batch, size)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, **engine.fused_update(model))
    for _ in range(3):
        step(segmentation_loss, opt)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step(segmentation_loss, opt)
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=36, max_shapes_column_width=70))


def main(argv=None) -> int:
    from bench_layout import step_parser

    p = step_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--profile", metavar="NETWORK", help="print the op profile of NETWORK's step instead")
    args = p.parse_args(argv)
    import torch

    import dakd_core.compat  # noqa: F401  (timm's torchvision shim)

    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    if args.profile:
        profile_step(args.profile, args.batch, size)
        return 0
    print(f"batch {args.batch}, {size[0]}x{size[1]}, {args.threads} thread(s), torch {torch.__version__}")
    print("| training step | 4-D CE + AdamW loop, ms | rows CE + fused AdamW, ms | new / old |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        old, new = step_pair(name, args.batch, size, args.rounds)
        print(f"| {name} | {old * 1e3:.1f} | {new * 1e3:.1f} | {new / old:.2f} |", flush=True)
    print("\n| part | old, ms | new, ms | new / old |")
    print("|---|---:|---:|---:|")
    for stride in (2, 8):
        shape = (args.batch, 19, size[0] // stride, size[1] // stride)
        old, new = ce_pair(shape, size, 20)
        print(f"| CE fwd+bwd, logits at stride {stride} | {old * 1e3:.2f} | {new * 1e3:.2f} | {new / old:.2f} |", flush=True)
    for name in args.models:
        old, new = adamw_pair(name, 20)
        print(f"| AdamW step, {name} | {old * 1e3:.2f} | {new * 1e3:.2f} | {new / old:.2f} |", flush=True)
    print("\n| source-distillation step | two main-head CEs, ms | shared log-softmax, ms | shared / two |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        old, new = source_distill_pair(name, args.batch, size, args.rounds)
        print(f"| {name} | {old * 1e3:.1f} | {new * 1e3:.1f} | {new / old:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
