"""Real-time throughput of students and teachers, and the latency-vs-mIoU plot (issue 9).

    .venv/bin/python benchmarks/bench_realtime.py --out /tmp/realtime \
        [--students swiftnet_resnet18,swiftnet_mobilenetv4] [--teachers deeplabv2_resnet101] \
        [--train-resolution 512x1024] [--iters 5] [--full-iters 2] [--teacher-full-hd] \
        [--miou swiftnet_resnet18=/path/eval/metrics.json#student ...] [--device auto]

Students: every runtime of the device (CPU: eager FP32, ONNX Runtime FP32/FP16; CUDA: eager FP32,
autocast FP16, ORT when its CUDA provider exists) at the training resolution and at 1080x1920.
Teachers: eager FP32 (FP16 too on CUDA) at the training resolution (and 1080x1920 with
--teacher-full-hd: a DeepLabV2-R101 forward at Full HD takes tens of seconds on a laptop CPU).
Writes OUT/realtime.md (table), OUT/latency_vs_miou.png (when --miou is given; latency of each
network's fastest runtime at --plot-resolution) and OUT/realtime.json last; prints the table.
Timings vary 20-30% run to run on shared CPUs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import sys

from dakd_core.errors import DakdError


def _hw(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) <= 0 or int(w) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x1024, got '{text}'")
    return int(h), int(w)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="dakd bench realtime", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory or store URI for realtime.json/.md and the plot")
    p.add_argument("--students", type=_names, default=["swiftnet_resnet18", "swiftnet_mobilenetv4"])
    p.add_argument("--teachers", type=_names, default=["deeplabv2_resnet101"])
    p.add_argument("--train-resolution", type=_hw, default=(512, 1024))
    p.add_argument("--iters", type=int, default=5, help="timed runs at the training resolution")
    p.add_argument("--full-iters", type=int, default=2, help="timed runs at --full-resolution")
    p.add_argument("--full-resolution", type=_hw, default=None, help="default 1080x1920")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--teacher-full-hd", action="store_true")
    p.add_argument("--miou", action="append", default=[], metavar="MODEL=URI[#ENTRY]",
                   help="mIoU of MODEL from a metrics.json (ENTRY: the model's name inside it)")
    p.add_argument("--plot-resolution", type=_hw, default=None, help="default: the training resolution")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from dakd_core.evaluation import realtime
    from dakd_core.evaluation.inference import resolve_device

    # Check the --miou specs before minutes of measuring.
    mious = []
    for spec in args.miou:
        model, sep, uri = spec.partition("=")
        if not sep or model not in args.students + args.teachers:
            raise DakdError(f"--miou '{spec}': expected MODEL=URI with MODEL one of the measured networks")
        uri, _, entry = uri.partition("#")
        mious.append((model, realtime.read_miou(uri, entry or None)))

    device = resolve_device(args.device)
    train, full = tuple(args.train_resolution), tuple(args.full_resolution or realtime.FULL_HD)
    iters = {train: args.iters, full: args.full_iters}
    student_res = [train] if train == full else [train, full]
    teacher_res = student_res if args.teacher_full_hd else [train]
    teacher_rts = [rt for rt in realtime.runtimes_for(device) if rt.name == "torch"]
    rows = realtime.measure(args.students, student_res, device, iters, args.warmup)
    rows += realtime.measure(args.teachers, teacher_res, device, iters, args.warmup, runtimes=teacher_rts)

    plot_hw = args.plot_resolution or train
    plot_res = f"{plot_hw[0]}x{plot_hw[1]}"
    points = []
    for model, miou in mious:
        best = realtime.fastest(rows, model, plot_res)
        points.append({"model": model, "role": "student" if model in args.students else "teacher",
                       "miou": miou, "latency_ms": best["latency_ms"],
                       "runtime": f"{best['runtime']} {best['precision']}"})
    doc = realtime.publish(args.out, rows, points, plot_res)
    print(realtime.markdown_table(rows))
    for name, uri in doc["files"].items():
        print(f"{name}: {uri}")
    return doc


if __name__ == "__main__":
    try:
        main()
    except DakdError as e:
        print(f"bench_realtime: error: {e}", file=sys.stderr)
        sys.exit(2)
