"""Distillation performance, ratios measured side by side in one run (CPU or GPU).

(1) segmenter step time: distilling from the teacher cache vs from the live teacher vs the student
    training alone (the adapt loop, same data) - goals: cached <= 1.15 x alone, live / cached >= 1.8
    for deeplabv2_resnet101 -> deeplabv2_resnet18;
(2) cache bytes per image vs fp32 main + aux maps (goal <= 25 %), for uint8 and fp16 caches;
(3) with --teacher-ckpt/--student-ckpt/--val-manifest (adapted checkpoints and a labelled target
    split): target mIoU after distilling from the cache vs from the live teacher (goal: |diff| <= 0.3).

    .venv/bin/python benchmarks/bench_distill.py --size 128 256 --iterations 6
Step time = median gap between consecutive steps over interleaved rounds of the three runs
(start-up, MLflow and the gate excluded). On CPU the gap is measured in CPU seconds of the process
(one thread, in-process data loading: the work of a step; the wall clock of a shared machine adds
its queue, which made "cached / alone" read 0.64x in one run and 0.82x in the next), on CUDA in
wall seconds. All three runs see the same data work: no random scale or flip on either domain
(distill leaves target crops unaugmented by default, adapt would augment them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time

import numpy as np
import torch

os.environ.setdefault("DAKD_NO_PROGRESS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAKD_SYSTEM_METRICS", "0")  # its sampling thread would add to the CPU clock


def make_data(store_uri: str, name: str, n: int, size, labelled: bool) -> str:
    from dakd_core.data.imageio import encode_png
    from dakd_core.data.manifest import write_manifest
    from dakd_core.storage import open_store

    store, rng, rows = open_store(store_uri), np.random.default_rng(len(name)), []
    h, w = size
    for i in range(n):
        label = (np.arange(h)[:, None] * 3 // h + 0 * np.arange(w)[None]).astype(np.uint8) * 5
        image = np.clip(label[..., None] * 20 + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        data = encode_png(image)
        rows.append({
            "sample_id": f"{name}_{i}", "split": "train", "domain": name, "condition": None,
            "image_uri": store.put_bytes(f"{name}/{i}.png", data),
            "label_uri": store.put_bytes(f"{name}/{i}_label.png", encode_png(label)) if labelled else None,
            "height": h, "width": w, "sha256": hashlib.sha256(data).hexdigest(),
            "class_pixels": [int((label == c).sum()) for c in range(19)],
        })
    return write_manifest(store, f"{name}/manifest.parquet", rows)


def checkpoint(uri: str, model: str) -> str:
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload, save_checkpoint

    return save_checkpoint(uri, make_payload(create_model(model, num_classes=19)))


def step_gaps(fn, cfg, clock=time.perf_counter, probe=None) -> list[float]:
    """Seconds of `clock` between consecutive training steps of one run (data loading included;
    start-up, MLflow and the gate excluded), stamped at the shared engine's end_step. `probe`, a
    context manager, is held from the first step's end to the last's (the timed steps only)."""
    from dakd_core.train import engine

    stamps: list[float] = []
    real = engine.RunKeeper.end_step
    held = contextlib.ExitStack()

    def stamped(self, step, losses):
        stamps.append(clock())
        if probe is not None and len(stamps) == 1:
            held.enter_context(probe)
        if step == cfg.iterations:
            held.close()
        return real(self, step, losses)

    engine.RunKeeper.end_step = stamped
    try:
        fn(cfg)
    finally:
        engine.RunKeeper.end_step = real
        held.close()
    return list(np.diff(stamps))


def measure(argv=None, probe=None) -> dict:
    """Run the benchmark and return its report (the JSON that main prints). `probe(kind)`, if
    given, makes a context manager held over the timed steps of each run (kind: alone, cached,
    live), e.g. a GPU utilisation sampler."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-model", default="deeplabv2_resnet101")
    ap.add_argument("--student-model", default="deeplabv2_resnet18")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=5, help="timed steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three runs")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader workers (0 on CPU: the CPU clock counts this process only)")
    ap.add_argument("--teacher-ckpt"), ap.add_argument("--student-ckpt"), ap.add_argument("--val-manifest")
    ap.add_argument("--no-mlflow", dest="log_mlflow", action="store_false",
                    help="the stages without their MLflow runs (log_mlflow off; a machine without MLflow)")
    args = ap.parse_args(argv)
    from dakd_core.bench.scratch import scratch_dir

    with scratch_dir("dakd-bench-distill-") as root:
        return _measure_in(str(root), args, probe)


def _measure_in(root: str, args, probe) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from dakd_core.bench.clock import cpu_seconds
    from dakd_core.cache import CacheConfig, TeacherCache, run_cache
    from dakd_core.train import adapt, distill
    from dakd_core.train.configs import AdaptConfig
    from dakd_core.train.distill import DistillConfig

    store = f"file://{root}"
    size = tuple(args.size)
    src = make_data(store, "src", args.images, size, True)
    tgt = make_data(store, "tgt", args.images, size, False)
    teacher = args.teacher_ckpt or checkpoint(f"{store}/teacher.pt", args.teacher_model)
    student = args.student_ckpt or checkpoint(f"{store}/student.pt", args.student_model)
    report = {"device": str(args.device or ("cuda" if torch.cuda.is_available() else "cpu")),
              "teacher": args.teacher_model, "student": args.student_model, "size": size}

    index = {}
    for dtype in ("uint8", "fp16"):
        t0 = time.perf_counter()
        res = run_cache(CacheConfig(teacher=teacher, manifests=[src, tgt], store=store, name=dtype, dtype=dtype,
                                    size=size, batch_size=args.batch_size, device=args.device))
        index[dtype] = res.index_uri
        row = TeacherCache(res.index_uri).row("tgt_0")
        fp32 = 4 * (np.prod(row["main_shape"]) + np.prod(row["aux_shape"]))
        report[f"cache_{dtype}_bytes_per_image_vs_fp32_maps"] = res.bytes_written / (2 * args.images) / fp32
        report[f"cache_{dtype}_seconds_per_image"] = (time.perf_counter() - t0) / (2 * args.images)

    common = dict(model=args.student_model, source_manifest=src, target_manifest=tgt, init=student,
                  source_resize=size, target_resize=size, crop=size, scale_range=(1.0, 1.0), flip=False,
                  batch_size=args.batch_size, num_workers=args.workers, device=args.device, checkpoint_every=10_000,
                  log_every=10_000, log_mlflow=args.log_mlflow)

    n = args.iterations + 1

    def distill_cfg(online, tag):
        return DistillConfig(**common, iterations=n, out=f"{store}/runs/distill_{online}_{tag}", paradigm="c",
                             teacher=teacher, teacher_cache=None if online else index["uint8"],
                             teacher_online=online, gate_max_images=1)

    wall = report["device"].startswith("cuda") or args.workers > 0  # loader workers' CPU is not ours
    clock = time.perf_counter if wall else cpu_seconds
    report["clock"] = "wall" if wall else "cpu"
    # Rounds interleave the three kinds so that load from other processes hits all of them alike.
    gaps: dict[str, list[float]] = {"alone": [], "cached": [], "live": []}
    for r in range(args.rounds):
        runs = {"alone": (adapt.run, AdaptConfig(**common, iterations=n, out=f"{store}/runs/adapt_{r}")),
                "cached": (distill.run, distill_cfg(False, f"time{r}")),
                "live": (distill.run, distill_cfg(True, f"time{r}"))}
        for kind, (fn, cfg) in runs.items():
            gaps[kind] += step_gaps(fn, cfg, clock, probe(kind) if probe else None)
    alone, cached, live = (float(np.median(gaps[k])) for k in ("alone", "cached", "live"))
    report.update(step_seconds_alone=alone, step_seconds_cached=cached, step_seconds_live=live,
                  cached_over_alone=cached / alone, live_over_cached=live / cached)
    if args.val_manifest and args.teacher_ckpt and args.student_ckpt:
        from dakd_core.data.dataset import ManifestDataset
        from dakd_core.models.checkpoint import load_model
        from dakd_core.train.engine import default_device, evaluate_miou

        val = ManifestDataset(args.val_manifest, train=False, with_labels=True, resize=size)
        device = torch.device(args.device) if args.device else default_device()
        miou = {}
        for online in (False, True):
            res = distill.run(distill_cfg(online, "miou"))
            model, _ = load_model(res.last_checkpoint_uri, map_location=device)
            miou[online] = evaluate_miou(model, val, 19, device, amp=device.type == "cuda")
        report.update(miou_cached=miou[False], miou_live=miou[True], miou_diff_points=100 * (miou[False] - miou[True]))
    return report


def main(argv=None) -> None:
    print(json.dumps(measure(argv), indent=2, default=float))


if __name__ == "__main__":
    main()
