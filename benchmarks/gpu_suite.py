"""GPU suite: what one lent GPU says about dakd, in one table, within 8 minutes.

Sections, each measured side by side in one run (paper networks, DeepLab-v2 R101 teacher and R18
student, at 512x1024, batch 2):
- train: the `dakd pretrain` AMP step against a bare AMP loop (same optimiser, schedule, batches),
  both timed over the same steps after a warm-up (dakd's from its step gaps: no start-up, no
  final checkpoint);
- loader: the training stream's images/s with 1 and N DataLoader workers against what the GPU step
  consumes (the student's bare AMP loop, the hungrier of the two);
- distill: step time from the uint8 teacher cache, with the live teacher, and the student alone,
  with the GPU's utilisation (NVML, nvidia-ml-py if installed) sampled during each kind of run
  (a mean over less than 5 s of sampling is not reported);
- export_b1, export_b8: FP16 against FP32 throughput at batch 1 and 8 (inputs made on the GPU,
  channels-last, cudnn.benchmark on, the TF32 switches recorded): torch AMP and the FP16
  torch.export program against FP32 eager;
- ort: ONNX Runtime with each GPU provider present (CUDA: the FP16 graph; TensorRT: its FP16
  engine) against the same provider in FP32, input and output bound on the device; a provider
  that falls back to the CPU is an error row, never a CUDA figure.

The stages run without MLflow (log_mlflow off: tracking is not what is timed, and the lent
machines have no MLflow). Nothing measured is lost: the output paths are printed first; every section runs under its own
time bound (and the --budget-s left), a section that fails or overruns becomes a row with its error
while the others keep theirs, and the JSON and Markdown are rewritten (atomically) before and
after every section, so a kill leaves the finished sections and names the one that was running.

    python benchmarks/gpu_suite.py [--json suite.json] [--budget-s 420]
    python benchmarks/gpu_suite.py --dry-run    # CPU, tiny networks and sizes: every code path, ~20 s
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

# `python benchmarks/gpu_suite.py` puts benchmarks/ on sys.path, not the checkout: dakd_core is
# imported from the checkout this script is in, whatever else is installed
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))

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
    train_warmup: int
    train_workers: int
    loader_workers: tuple[int, ...]
    loader_batches: int
    distill_iters: int
    distill_rounds: int
    distill_images: int
    export_batches: tuple[int, ...]
    export_iters: int
    bounds: dict = field(default_factory=dict)  # seconds per section (the budget left caps each)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PRESETS = {
    # distill: 60 timed steps x 2 rounds per kind, so each kind's utilisation is sampled over >= 5 s
    "gpu": Preset("cuda", "deeplabv2_resnet101", "deeplabv2_resnet18", (512, 1024), 2, train_iters=30, train_warmup=5,
                  train_workers=min(8, _cores()), loader_workers=(1, min(8, _cores())), loader_batches=20,
                  distill_iters=60, distill_rounds=2, distill_images=8, export_batches=(1, 8), export_iters=30,
                  bounds={"export_b1": 120, "export_b8": 150, "train": 150, "distill": 150, "ort": 90, "loader": 60}),
    "dry": Preset("cpu", "deeplabv2_tiny", "deeplabv2_tiny", (32, 64), 1, train_iters=2, train_warmup=0, train_workers=0,
                  loader_workers=(1, 2), loader_batches=2, distill_iters=2, distill_rounds=1, distill_images=2,
                  export_batches=(1,), export_iters=2,
                  # a smoke of every code path, not a timing: a loaded CPU (the distill section took
                  # 121 s at load average 10 on 2 cores) must not stop it at a GPU-sized bound
                  bounds=dict.fromkeys(("export_b1", "train", "distill", "ort", "loader"), 600)),
}
DEFAULT_BOUND_S = 120.0  # a section the preset gives no bound


def _load(name: str):
    from dakd_core.bench.perf import load_benchmark

    return load_benchmark(name)


def train_section(p: Preset, sampler) -> dict:
    models = list(dict.fromkeys((p.teacher, p.student)))
    return _load("bench_train").measure(["--models", *models, "--iters", str(p.train_iters), "--batch", str(p.batch),
                                         "--size", *map(str, p.size), "--workers", str(p.train_workers),
                                         "--warmup", str(p.train_warmup), "--no-mlflow"])


def loader_section(p: Preset, sampler) -> dict:
    h, w = map(str, p.size)
    return _load("bench_loader").measure(["--size", h, w, "--crop", h, w, "--batch", str(p.batch),
                                          "--images", str(max(4, p.batch * 2)), "--batches", str(p.loader_batches),
                                          "--workers", *map(str, p.loader_workers), "--repeats", "1"])


def distill_section(p: Preset, sampler) -> dict:
    return _load("bench_distill").measure(
        ["--teacher-model", p.teacher, "--student-model", p.student, "--size", *map(str, p.size),
         "--batch-size", str(p.batch), "--iterations", str(p.distill_iters), "--rounds", str(p.distill_rounds),
         "--images", str(p.distill_images), "--device", p.device, "--workers", str(p.train_workers), "--no-mlflow"],
        probe=sampler.probe)


def export_section(p: Preset, sampler, batch: int) -> dict:
    return _load("bench_export").main(["--student", p.student, "--teacher", p.teacher, "--resolution",
                                       f"{p.size[0]}x{p.size[1]}", "--batch-size", str(batch),
                                       "--iters", str(p.export_iters), "--eval-images", "2"])


def ort_providers(device: str) -> list[str]:
    """The ONNX Runtime providers worth timing here: the GPU ones present on CUDA, the CPU one on CPU."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]


class ProviderFallback(RuntimeError):
    """ONNX Runtime was asked for a provider and runs the session on another (it only warns)."""


def ort_rate(session, provider: str, x, iters: int, warmup: int = 3) -> float:
    """Median images/s of `session` on `x`, with the input and the output bound on the provider's
    device (IO binding): no host copy of either is timed. Fails when the session does not run on
    `provider`: a CUDA provider that could not load leaves a CPU session behind."""
    import onnxruntime as ort

    used = session.get_providers()[0]
    if used != provider:
        raise ProviderFallback(f"asked for {provider}, ONNX Runtime runs the session on {used} "
                               f"(its providers: {session.get_providers()})")
    where = "cpu" if provider == "CPUExecutionProvider" else "cuda"
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, where, 0))
    binding.bind_output(session.get_outputs()[0].name, where)
    for _ in range(warmup):  # TensorRT builds its engine here
        session.run_with_iobinding(binding)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - start)
    return x.shape[0] / sorted(times)[len(times) // 2]


def ort_section(p: Preset, sampler) -> dict:
    """FP16 vs FP32 images/s per provider. TensorRT builds its own FP16 engine from the FP32 graph
    (trt_fp16_enable); the others run the FP16 graph of `dakd export`. A provider that fails
    (or falls back to the CPU) gives {"error": ...} while the others are still timed."""
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
        try:
            for precision, (model, options) in variants.items():
                session = ort.InferenceSession(model, providers=[(provider, options)])
                out.setdefault(provider, {})[precision] = ort_rate(session, provider, x, p.export_iters)
        except Exception as e:  # noqa: BLE001  (one provider's failure is its row; the next is still timed)
            out[provider] = {"error": f"{type(e).__name__}: {e}"}
    return out


def sections(p: Preset) -> list[tuple[str, object]]:
    """(name, fn(preset, sampler) -> result) in the order they run: the goals' figures first
    (P5 export, P8 train and utilisation, the live/cache ratio), the loader last."""
    runs = [(f"export_b{b}", functools.partial(export_section, batch=b)) for b in p.export_batches]
    return runs + [("train", train_section), ("distill", distill_section), ("ort", ort_section),
                   ("loader", loader_section)]


def suite_rows(results: dict, sampler, device: str) -> list:
    """The table's rows from the sections' results (a skipped or failed section gives one row
    saying why; the others keep theirs)."""
    from dakd_core.bench.gpu import MIN_WINDOW_S
    from dakd_core.bench.perf import PerfRow, distill_rows, export_rows, loader_rows, train_rows

    rows = []
    for name, why in results.get("skipped", {}).items():
        rows.append(PerfRow(name, "skipped", math.nan, "", "", why))
    for name, why in results.get("errors", {}).items():
        rows.append(PerfRow(name, "error", math.nan, "", "", why))
    train, loader = results.get("train"), results.get("loader")
    if train:
        rows += train_rows(train)
    for name in sorted(k for k in results if k.startswith("export_b") and results[k]):
        export = results[name]
        rows += [PerfRow(r.stage, f"{r.measure}, batch {export['batch_size']}", r.value, r.unit, r.goal,
                         "; ".join(filter(None, (r.detail, _settings(export)))))
                 for r in export_rows(export)]
    if results.get("distill"):
        rows += distill_rows(results["distill"])
        for kind in ("alone", "cached", "live"):
            rows.append(_utilisation_row(sampler, kind, MIN_WINDOW_S))
    for provider, rates in (results.get("ort") or {}).items():
        if "error" in rates:
            rows.append(PerfRow("export", f"ONNX Runtime {provider}: FP16 / FP32 throughput", math.nan, "x", "",
                                rates["error"]))
            continue
        rows.append(PerfRow("export", f"ONNX Runtime {provider}: FP16 / FP32 throughput", rates["fp16"] / rates["fp32"],
                            "x", ">= 1.5" if device == "cuda" else "",
                            f"{rates['fp16']:.2f} vs {rates['fp32']:.2f} img/s, batch 1, I/O bound on the device"))
    if results.get("ort") == {}:
        rows.append(PerfRow("export", "ONNX Runtime GPU providers", math.nan, "", "",
                            "none present (the CUDA image has onnxruntime-gpu; pip install onnxruntime-gpu)"))
    if loader:
        rows += loader_rows(loader)
        rates, many = loader["rates"], max(loader["rates"])
        if train:
            # The GPU's appetite: the bare loop of the fastest network (no loader in it at all).
            hungriest = max(train["rows"], key=lambda r: r["bare_img_s"])
            rows.append(PerfRow("loader", f"training stream, {many} workers / {hungriest['model']} bare step consumption",
                                rates[many] / hungriest["bare_img_s"], "x", ">= 1.0",
                                f"{rates[many]:.1f} vs {hungriest['bare_img_s']:.1f} img/s"))
    return rows


def _settings(export: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (export.get("settings") or {}).items())


def _utilisation_row(sampler, kind: str, min_window: float):
    from dakd_core.bench.perf import PerfRow

    mean, window, n = sampler.mean(kind), sampler.window(kind), len(sampler.samples.get(kind, []))
    measure = f"GPU utilisation, {kind} steps"
    if mean is None:
        return PerfRow("distill", measure, math.nan, "%", "", f"not sampled: {sampler.unavailable or 'no GPU'}")
    if window < min_window:
        return PerfRow("distill", measure, math.nan, "%", "",
                       f"not reported: {n} NVML samples over {window:.1f} s, under the {min_window:.0f} s window")
    return PerfRow("distill", measure, mean, "%", ">= 85" if kind == "cached" else "",
                   f"mean of {n} NVML samples over {window:.1f} s")


# ---------------------------------------------------------------- running without losing figures


class SectionTimeout(Exception):
    """A section ran past its time bound."""


@contextlib.contextmanager
def time_bound(seconds: float):
    """Raise SectionTimeout in the running section after `seconds` (SIGALRM: the main thread of
    a POSIX process; elsewhere the section runs unbounded and the budget still holds between
    sections)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise SectionTimeout(f"stopped at its time bound of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _terminated(signum, frame):
    # `timeout` and the device tool stop a run with SIGTERM: end the section like Ctrl-C, so its
    # state is written before the process goes
    raise KeyboardInterrupt(f"signal {signum}")


def write_atomically(path: Path, text: str) -> None:
    """Readers (and a kill at any moment) see the old file or the new one, never half of one:
    the store's write (a temporary file beside it, fsync, rename)."""
    from dakd_core.storage import open_store

    open_store(str(path.parent)).put_bytes(path.name, text.encode())


class Report:
    """The suite's JSON and Markdown, rewritten whole after every change of a section's state."""

    def __init__(self, json_path: Path, markdown_path: Path, header: dict, sampler):
        self.json_path, self.markdown_path, self.sampler = json_path, markdown_path, sampler
        self.data = {**header, "sections": {}, "seconds": {}, "results": {"skipped": {}, "errors": {}}}
        self.started = time.perf_counter()

    def section(self, name: str, status: str, seconds: float | None = None, result=None, why: str = "") -> None:
        entry = {"status": status}
        if seconds is not None:
            entry["seconds"] = self.data["seconds"][name] = round(seconds, 1)
        if why:
            entry["why"] = why
        if status == "ok":
            self.data["results"][name] = result
        elif status == "skipped":
            self.data["results"]["skipped"][name] = why
        elif status in ("error", "interrupted"):
            self.data["results"]["errors"][name] = why
        self.data["sections"][name] = entry
        self.write()

    def rows(self) -> list:
        return suite_rows(self.data["results"], self.sampler, self.data["preset"]["device"])

    def write(self) -> None:
        from dakd_core.bench.perf import markdown_table

        rows = self.rows()
        self.data["minutes"] = round((time.perf_counter() - self.started) / 60, 2)
        self.data["gpu_utilisation"] = {k: {"mean": self.sampler.mean(k), "window_s": self.sampler.window(k),
                                            "samples": len(v)} for k, v in self.sampler.samples.items()}
        self.data["rows"] = [r.__dict__ | {"status": r.status} for r in rows]
        write_atomically(self.json_path, json.dumps(self.data, indent=2, default=str))
        states = ", ".join(f"{k} {v['status']}" + (f" {v['seconds']:.0f} s" if "seconds" in v else "")
                           for k, v in self.data["sections"].items())
        write_atomically(self.markdown_path, f"`{self.data['command']}` on {self.data['machine']}, "
                                             f"{self.data['date']}, {self.data['minutes']:.1f} minutes "
                                             f"({states})\n\n{markdown_table(rows)}\n")


def run_sections(report: Report, preset: Preset, sampler, budget_s: float) -> None:
    started = time.perf_counter()
    for name, fn in sections(preset):
        left = budget_s - (time.perf_counter() - started)
        if left <= 0:
            report.section(name, "skipped", why=f"budget: {budget_s - left:.0f} s of {budget_s:.0f} s spent")
            continue
        bound = min(preset.bounds.get(name, DEFAULT_BOUND_S), left)
        print(f"== {name} (bound {bound:.0f} s)", flush=True)
        report.section(name, "running")  # a kill from here on leaves this in the JSON
        t0 = time.perf_counter()
        try:
            with time_bound(bound):
                result = fn(preset, sampler)
        except KeyboardInterrupt as e:
            report.section(name, "interrupted", time.perf_counter() - t0, why=f"interrupted ({e or 'Ctrl-C'})")
            raise
        except (Exception, SystemExit) as e:  # noqa: BLE001  (a section's failure is its row, not the suite's end)
            traceback.print_exc()
            report.section(name, "error", time.perf_counter() - t0, why=f"{type(e).__name__}: {e}")
        else:
            report.section(name, "ok", time.perf_counter() - t0, result=result)
        _release_memory(preset.device)


def _release_memory(device: str) -> None:
    """What a failed section held (an out-of-memory batch, its models) is not the next one's."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny networks and sizes (the test's run)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="sections share this many seconds: none starts after it, each is bounded by what is left")
    ap.add_argument("--json", type=Path, help="results and rows (default: gpu_suite.json in a new temporary directory)")
    ap.add_argument("--markdown", type=Path, help="the table (default: the --json path with .md)")
    args = ap.parse_args(argv)
    preset = PRESETS["dry" if args.dry_run else "gpu"]
    import torch

    if preset.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run it on a GPU machine, or --dry-run for the CPU smoke")
    json_path = args.json or Path(tempfile.mkdtemp(prefix="dakd-gpu-suite-")) / "gpu_suite.json"
    markdown_path = args.markdown or json_path.with_suffix(".md")
    import dakd_core

    # first, so that whatever happens later the figures can be found
    print(f"gpu suite: JSON {json_path.resolve()}\ngpu suite: Markdown {markdown_path.resolve()}\n"
          f"gpu suite: dakd_core from {Path(dakd_core.__file__).resolve().parent}, torch {torch.__version__}", flush=True)
    os.environ["DAKD_DEVICE"] = preset.device  # the stage benchmarks pick their device from it
    from dakd_core.bench.gpu import UtilisationSampler, nvml_reader
    from dakd_core.bench.results import machine_description

    read, why = nvml_reader() if preset.device == "cuda" else (None, "CPU run")
    sampler = UtilisationSampler(read, unavailable=why)
    command = "python benchmarks/gpu_suite.py" + (" --dry-run" if args.dry_run else "")
    report = Report(json_path, markdown_path, {
        "command": command, "machine": machine_description(preset.device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "budget_s": args.budget_s,
        "preset": preset.__dict__}, sampler)
    report.write()
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        run_sections(report, preset, sampler, args.budget_s)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"\n{markdown_path.read_text()}")
    return report.data


if __name__ == "__main__":
    main()
    sys.exit(0)
