"""GPU suite: what one lent GPU says about dakd, in one table, within 8 minutes.

Sections, each measured side by side in one run (paper networks, DeepLab-v2 R101 teacher and R18
student, at 512x1024, batch 2):
- train: the `dakd pretrain` AMP step against a bare AMP loop (same optimiser, schedule, batches);
- loader: the training stream's images/s with 1 and N DataLoader workers against what the GPU step
  consumes (the student's bare AMP loop, the hungrier of the two);
- distill: step time from the uint8 teacher cache, with the live teacher, and the student alone,
  with the GPU's utilisation (NVML, nvidia-ml-py if installed) sampled during each kind of run;
- export: FP16 against FP32 throughput: torch AMP and the FP16 torch.export program against FP32
  eager, ONNX Runtime with each GPU provider present (CUDA: the FP16 graph; TensorRT: its FP16
  engine) against the same provider in FP32.
A section that would start past --budget-s is reported as skipped rather than overrunning.

    python benchmarks/gpu_suite.py [--json suite.json] [--budget-s 480]
    python benchmarks/gpu_suite.py --dry-run    # CPU, tiny networks and sizes: every code path, ~20 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("DAKD_NO_PROGRESS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True)
class Preset:
    device: str
    teacher: str
    student: str
    size: tuple[int, int]  # (H, W)
    batch: int
    train_iters: int
    train_workers: int
    loader_workers: tuple[int, ...]
    loader_batches: int
    distill_iters: int
    distill_rounds: int
    distill_images: int
    export_iters: int


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PRESETS = {
    "gpu": Preset("cuda", "deeplabv2_resnet101", "deeplabv2_resnet18", (512, 1024), 2, train_iters=30,
                  train_workers=min(8, _cores()), loader_workers=(1, min(8, _cores())), loader_batches=20,
                  distill_iters=8, distill_rounds=2, distill_images=8, export_iters=30),
    "dry": Preset("cpu", "deeplabv2_tiny", "deeplabv2_tiny", (32, 64), 1, train_iters=2, train_workers=0,
                  loader_workers=(1, 2), loader_batches=2, distill_iters=2, distill_rounds=1, distill_images=2,
                  export_iters=2),
}


def _load(name: str):
    from dakd_core.bench.perf import load_benchmark

    return load_benchmark(name)


def train_section(p: Preset) -> dict:
    models = list(dict.fromkeys((p.teacher, p.student)))
    return _load("bench_train").measure(["--models", *models, "--iters", str(p.train_iters), "--batch", str(p.batch),
                                         "--size", *map(str, p.size), "--workers", str(p.train_workers)])


def loader_section(p: Preset) -> dict:
    h, w = map(str, p.size)
    return _load("bench_loader").measure(["--size", h, w, "--crop", h, w, "--batch", str(p.batch),
                                          "--images", str(max(4, p.batch * 2)), "--batches", str(p.loader_batches),
                                          "--workers", *map(str, p.loader_workers), "--repeats", "1"])


def distill_section(p: Preset, sampler) -> dict:
    return _load("bench_distill").measure(
        ["--teacher-model", p.teacher, "--student-model", p.student, "--size", *map(str, p.size),
         "--batch-size", str(p.batch), "--iterations", str(p.distill_iters), "--rounds", str(p.distill_rounds),
         "--images", str(p.distill_images), "--device", p.device, "--workers", str(p.train_workers)],
        probe=sampler.probe)


def export_section(p: Preset) -> dict:
    return _load("bench_export").main(["--student", p.student, "--teacher", p.teacher, "--resolution",
                                       f"{p.size[0]}x{p.size[1]}", "--batch-size", "1", "--iters", str(p.export_iters),
                                       "--eval-images", "2"])


def ort_providers(device: str) -> list[str]:
    """The ONNX Runtime providers worth timing here: the GPU ones present on CUDA, the CPU one on CPU."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]


def ort_section(p: Preset) -> dict:
    """FP16 vs FP32 images/s per provider. TensorRT builds its own FP16 engine from the FP32 graph
    (trt_fp16_enable); the others run the FP16 graph of `dakd export`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from dakd_core.evaluation.inference import DeployedSegmenter
    from dakd_core.export import export_onnx, onnx_to_fp16
    from dakd_core.models import create_model

    torch.manual_seed(0)
    onnx32 = export_onnx(DeployedSegmenter(create_model(p.student)).eval())
    onnx16 = onnx_to_fp16(onnx32)
    x = (np.random.default_rng(0).random((1, 3, *p.size), dtype=np.float32) * 255)
    out = {}
    for provider in ort_providers(p.device):
        variants = ({"fp32": (onnx32, {}), "fp16": (onnx32, {"trt_fp16_enable": True})}
                    if provider == "TensorrtExecutionProvider" else {"fp32": (onnx32, {}), "fp16": (onnx16, {})})
        for precision, (model, options) in variants.items():
            fallback = [] if provider == "CPUExecutionProvider" else ["CPUExecutionProvider"]
            session = ort.InferenceSession(model, providers=[(provider, options), *fallback])
            name = session.get_inputs()[0].name
            for _ in range(3):  # warm-up (TensorRT builds its engine here)
                session.run(None, {name: x})
            times = []
            for _ in range(p.export_iters):
                start = time.perf_counter()
                session.run(None, {name: x})
                times.append(time.perf_counter() - start)
            out.setdefault(provider, {})[precision] = 1.0 / sorted(times)[len(times) // 2]
    return out


def suite_rows(results: dict, sampler, device: str) -> list:
    """The table's rows from the sections' results (a skipped section gives one 'skipped' row)."""
    from dakd_core.bench.perf import PerfRow, distill_rows, export_rows, loader_rows, train_rows

    rows = []
    for name, why in results.get("skipped", {}).items():
        rows.append(PerfRow(name, "skipped", math.nan, "", "", why))
    train, loader = results.get("train"), results.get("loader")
    if train:
        rows += train_rows(train)
    if loader:
        rows += loader_rows(loader)
        rates, many = loader["rates"], max(loader["rates"])
        if train:
            # The GPU's appetite: the bare loop of the fastest network (no loader in it at all).
            hungriest = max(train["rows"], key=lambda r: r["bare_img_s"])
            rows.append(PerfRow("loader", f"training stream, {many} workers / {hungriest['model']} bare step consumption",
                                rates[many] / hungriest["bare_img_s"], "x", ">= 1.0",
                                f"{rates[many]:.1f} vs {hungriest['bare_img_s']:.1f} img/s"))
    if results.get("distill"):
        rows += distill_rows(results["distill"])
        for kind in ("alone", "cached", "live"):
            mean = sampler.mean(kind)
            rows.append(PerfRow("distill", f"GPU utilisation, {kind} steps", math.nan if mean is None else mean, "%", "",
                                f"mean of {len(sampler.samples.get(kind, []))} NVML samples" if mean is not None
                                else f"not sampled: {sampler.unavailable or 'no GPU'}"))
    if results.get("export"):
        rows += export_rows(results["export"])
    for provider, rates in (results.get("ort") or {}).items():
        rows.append(PerfRow("export", f"ONNX Runtime {provider}: FP16 / FP32 throughput", rates["fp16"] / rates["fp32"],
                            "x", ">= 1.5" if device == "cuda" else "",
                            f"{rates['fp16']:.2f} vs {rates['fp32']:.2f} img/s, batch 1"))
    if results.get("ort") == {}:
        rows.append(PerfRow("export", "ONNX Runtime GPU providers", math.nan, "", "",
                            "none present (pip install onnxruntime-gpu for CUDA / TensorRT)"))
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny networks and sizes (the test's run)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="no section starts after this many seconds")
    ap.add_argument("--json", help="also write the results and rows here")
    args = ap.parse_args(argv)
    preset = PRESETS["dry" if args.dry_run else "gpu"]
    import torch

    if preset.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run it on a GPU machine, or --dry-run for the CPU smoke")
    os.environ["DAKD_DEVICE"] = preset.device  # the stage benchmarks pick their device from it
    if "MLFLOW_TRACKING_URI" not in os.environ:  # the sections' MLflow runs, in a small DB kept for a look
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='dakd-gpu-suite-')}/mlruns.db"
    from dakd_core.bench.gpu import UtilisationSampler, nvml_reader
    from dakd_core.bench.perf import markdown_table
    from dakd_core.bench.results import machine_description

    read, why = nvml_reader() if preset.device == "cuda" else (None, "CPU run")
    sampler = UtilisationSampler(read, unavailable=why)
    started = time.perf_counter()
    results: dict = {"skipped": {}}
    seconds = {}
    sections = (("train", lambda: train_section(preset)), ("loader", lambda: loader_section(preset)),
                ("distill", lambda: distill_section(preset, sampler)), ("export", lambda: export_section(preset)),
                ("ort", lambda: ort_section(preset)))
    for name, run in sections:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            results["skipped"][name] = f"budget: {elapsed:.0f} s of {args.budget_s:.0f} s spent"
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        results[name] = run()
        seconds[name] = round(time.perf_counter() - t0, 1)
    rows = suite_rows(results, sampler, preset.device)
    table = markdown_table(rows)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = "python benchmarks/gpu_suite.py" + (" --dry-run" if args.dry_run else "")
    print(f"\n`{command}` on {machine_description(preset.device)}, {stamp}, "
          f"{(time.perf_counter() - started) / 60:.1f} minutes ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})\n")
    print(table)
    report = {"preset": preset.__dict__, "seconds": seconds, "results": results, "date": stamp,
              "gpu_utilisation": {k: sampler.mean(k) for k in sampler.samples},
              "rows": [r.__dict__ | {"status": r.status} for r in rows]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
