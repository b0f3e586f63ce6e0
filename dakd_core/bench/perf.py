"""`dakd bench perf`: every stage's performance ratio, measured side by side in one run, one table.

The measurements are the stage benchmarks in `benchmarks/bench_*.py` (each still runnable as a
script); this module only calls their `measure(argv)` / `main(argv)` functions with one set of
arguments, turns their results into (ratio, goal) rows and writes `docs/performance.md`.
Absolute times on a shared machine vary 20-30 % run to run; the ratios within one run are what
the goals are stated on. On CUDA the benchmarks time their CUDA variants (AMP, FP16 programs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dakd_core.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """Import benchmarks/{name}.py (a script directory, not a package)."""
    path = BENCH_DIR / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"benchmark script {path} not found (run dakd bench perf from a source checkout)")
    spec = importlib.util.spec_from_file_location(f"dakd_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Arguments of each benchmark: full (docs/performance.md, <= 10 min on 2 shared cores; the results
# bench's demo pair deeplabv2_thin -> deeplabv2_tiny) and quick (a smoke).
ARGS = {
    "full": {
        "ingest": ["--n", "6", "--size", "512", "256", "--workers", "2", "--repeats", "2", "--formats", "cityscapes"],
        "train": ["--models", "deeplabv2_tiny", "deeplabv2_thin", "--iters", "10", "--batch", "2",
                  "--size", "64", "128", "--workers", "1"],
        "distill": ["--teacher-model", "deeplabv2_thin", "--student-model", "deeplabv2_tiny",
                    "--size", "64", "128", "--iterations", "6", "--images", "4"],
        "export": ["--student", "deeplabv2_tiny", "--teacher", "deeplabv2_thin", "--resolution", "128x256",
                   "--iters", "6", "--eval-images", "4"],
    },
    "quick": {
        "ingest": ["--n", "2", "--size", "64", "32", "--workers", "1", "--repeats", "1", "--formats", "cityscapes"],
        "train": ["--models", "deeplabv2_tiny", "--iters", "3", "--batch", "1", "--size", "32", "64", "--workers", "0"],
        "distill": ["--teacher-model", "deeplabv2_tiny", "--student-model", "deeplabv2_tiny", "--size", "32", "64",
                    "--iterations", "2", "--images", "2", "--batch-size", "1"],
        "export": ["--student", "deeplabv2_tiny", "--teacher", "deeplabv2_tiny", "--resolution", "32x64",
                   "--iters", "2", "--eval-images", "1"],
    },
}


@dataclass
class PerfRow:
    stage: str
    measure: str
    value: float
    unit: str  # "x" for ratios
    goal: str  # e.g. ">= 0.8"; "" when the stage issue states none
    detail: str = ""

    @property
    def status(self) -> str:
        if not self.goal:
            return "(no goal)"
        op, bound = self.goal.split()[:2]
        ok = self.value >= float(bound) if op == ">=" else self.value <= float(bound)
        return "met" if ok else "NOT met"


def perf_rows(ingest: dict, train: dict, distill: dict, export: dict) -> list[PerfRow]:
    """The table from the four benchmarks' results (pure: unit-testable on given numbers)."""
    rows = []
    for fmt, by_workers in ingest.items():
        for workers, r in sorted(by_workers.items()):
            for pool in ("thread", "process"):
                rows.append(PerfRow("ingest", f"{fmt}, {workers} worker(s), {pool} pool / raw decode+remap+encode",
                                    r[pool] / r["raw"], "x", ">= 0.8", f"{r[pool]:.1f} vs {r['raw']:.1f} img/s"))
    for r in train["rows"]:
        rows.append(PerfRow("train", f"{r['model']}: dakd pretrain step / bare PyTorch loop (throughput)",
                            r["dakd_over_bare"], "x", ">= 0.9",
                            f"{r['dakd_img_s']:.2f} vs {r['bare_img_s']:.2f} img/s, {train['device']}"))
    pair = f"{distill['teacher']} -> {distill['student']}"
    rows += [
        PerfRow("distill", f"step from the cache / student alone ({pair})", distill["cached_over_alone"], "x",
                "<= 1.15", f"{distill['step_seconds_cached']:.3f} vs {distill['step_seconds_alone']:.3f} s"),
        PerfRow("distill", f"step with the live teacher / from the cache ({pair})", distill["live_over_cached"], "x",
                ">= 1.8", f"{distill['step_seconds_live']:.3f} vs {distill['step_seconds_cached']:.3f} s"),
        PerfRow("cache", "uint8 cache bytes / fp32 main+aux maps", distill["cache_uint8_bytes_per_image_vs_fp32_maps"],
                "x", "<= 0.25"),
        PerfRow("cache", "fp16 cache bytes / fp32 main+aux maps", distill["cache_fp16_bytes_per_image_vs_fp32_maps"],
                "x", "", "the fp16 option trades size for precision"),
    ]
    tp = export["throughput_img_s"]
    for name, ratio in export["ratios"].items():
        num, _, den = name.partition(" / ")
        fp16 = "fp16" in num and "fp32" in den
        goal = ">= 1.5" if fp16 and export["device"].startswith("cuda") else ""
        detail = f"{tp[num]:.2f} vs {tp[den]:.2f} img/s"
        if fp16 and not goal:
            detail += "; FP16 speed is a GPU property (no goal on CPU)"
        rows.append(PerfRow("export", f"{num} / {den} throughput", ratio, "x", goal, detail))
    rows.append(PerfRow("evaluate", "evaluation throughput (predict + metrics)", export["evaluation_mpx_s"], "Mpx/s",
                        "", f"{export['device']}, {export['resolution'][0]}x{export['resolution'][1]}"))
    return rows


def markdown_table(rows: list[PerfRow]) -> str:
    lines = ["| stage | measure | value | goal | status | detail |", "|---|---|---:|---|---|---|"]
    for r in rows:
        value = f"{r.value:.2f}x" if r.unit == "x" else f"{r.value:.3f} {r.unit}"
        lines.append(f"| {r.stage} | {r.measure} | {value} | {r.goal or '–'} | {r.status} | {r.detail} |")
    return "\n".join(lines)


def run_perf(quick: bool, out: Path, json_path: Path | None, command: str) -> list[PerfRow]:
    """Run the four benchmarks one after the other, then write the Markdown table (and JSON)."""
    from dakd_core.bench.results import machine_description

    os.environ.setdefault("DAKD_NO_PROGRESS", "1")
    args = ARGS["quick" if quick else "full"]
    started = time.perf_counter()
    results, seconds = {}, {}
    for name, module, fn in (("ingest", "bench_ingest", "measure"), ("train", "bench_train", "measure"),
                             ("distill", "bench_distill", "measure"), ("export", "bench_export", "main")):
        t0 = time.perf_counter()
        print(f"== {name}: benchmarks/{module}.py {' '.join(args[name])}", flush=True)
        results[name] = getattr(load_benchmark(module), fn)(args[name])
        seconds[name] = time.perf_counter() - t0
    rows = perf_rows(**results)
    table = markdown_table(rows)
    print(table)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    text = f"""# Performance: every stage's ratio, measured side by side in one run

Latest run: `{command}` on {machine_description(device)}, {(time.perf_counter() - started) / 60:.1f} minutes
({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}). The machine is shared with other jobs:
absolute rates vary 20-30 % run to run, so every goal is a ratio of two things measured in the same
run (ingest alone is best of its repeats, interleaved with the raw loop).

{table}

Reproduce: `.venv/bin/dakd bench perf` (add `--json perf.json` for the raw numbers). It runs, with the
arguments listed below, the stage benchmarks that stay runnable on their own:

""" + "\n".join(f"- `.venv/bin/python benchmarks/{m}.py {' '.join(args[k])}`" for k, m in (
        ("ingest", "bench_ingest"), ("train", "bench_train"), ("distill", "bench_distill"),
        ("export", "bench_export"))) + """

Where the table comes from:
- ingest: `dakd ingest` (thread and process pools) against a bare read/decode/LUT-remap/encode loop
  over the same files with the same worker count.
- train: `dakd pretrain` steps (store reads, DataLoader, augmentation, NaN guard, MLflow, checkpoint)
  against a bare PyTorch loop over in-memory batches, same network, optimiser and batch.
- distill: median step time of `dakd distill` from the uint8 teacher cache, with the live teacher, and
  the student's own adaptation loop alone (same data); cache bytes per image from `dakd cache-teacher`.
  The stated goal for live / cached is for deeplabv2_resnet101 -> deeplabv2_resnet18; here a smaller
  pair runs to fit the time budget, and the gap grows with the teacher's share of the step.
- export / evaluate: exported student FP16 vs FP32 (ONNX Runtime on CPU; torch.export FP16 vs eager
  on CUDA), student vs teacher eager throughput, and the `dakd evaluate` loop in megapixels/s.
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    if json_path is not None:
        json_path.write_text(json.dumps({"results": results, "seconds": seconds,
                                         "rows": [r.__dict__ | {"status": r.status} for r in rows]},
                                        indent=2, default=str))
    return rows
