"""Real-time numbers (issue 9): throughput of each network per runtime, precision and resolution,
and the latency-vs-mIoU plot of students and teachers.

Runtimes per device (what gives a meaningful FP16 number there):
- CUDA: eager FP32, eager FP16 (autocast), plus ONNX Runtime FP32/FP16 when its CUDA provider exists;
- CPU: eager FP32 and ONNX Runtime FP32/FP16 (CPU half kernels are slow in eager torch, so an eager
  FP16 row there would measure an emulation, not the model).
Networks are randomly initialised: speed does not depend on the weights. The deployed module
(`DeployedSegmenter`: normalisation + network + upsampling to the input size) is what is timed,
so the numbers are those of the exported student. mIoU comes from `metrics.json` files of
`dakd evaluate` / `dakd score`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from dakd_core.errors import DataError
from dakd_core.evaluation.inference import DeployedSegmenter, OnnxPredictor, TorchPredictor, no_progress

FULL_HD = (1080, 1920)


@dataclass(frozen=True)
class Runtime:
    name: str  # "torch" | "onnxruntime"
    precision: str  # "fp32" | "fp16"


def runtimes_for(device: torch.device) -> list[Runtime]:
    rts = [Runtime("torch", "fp32")]
    if device.type == "cuda":
        rts.append(Runtime("torch", "fp16"))
    import onnxruntime as ort

    if device.type == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers():
        rts += [Runtime("onnxruntime", "fp32"), Runtime("onnxruntime", "fp16")]
    return rts


def build_predictor(model: torch.nn.Module, runtime: Runtime, device: torch.device):
    """A callable images (N, 3, H, W float 0..255) -> logits for `runtime`."""
    if runtime.name == "torch":
        return TorchPredictor(DeployedSegmenter(model).eval().to(device), device, amp=runtime.precision == "fp16")
    from dakd_core.export import export_onnx, onnx_to_fp16

    onnx32 = export_onnx(DeployedSegmenter(model))
    data = onnx32 if runtime.precision == "fp32" else onnx_to_fp16(onnx32)
    model.to(device)  # export_onnx moved it to the CPU
    return OnnxPredictor(data, device, f"{model.name} ({runtime.precision} ONNX)")


def measure(model_names: list[str], resolutions: list[tuple[int, int]], device: torch.device,
            iters: dict[tuple[int, int], int], warmup: int = 1, batch_size: int = 1,
            runtimes: list[Runtime] | None = None) -> list[dict]:
    """One row per (model, runtime, precision, resolution): median latency (ms) and FPS.

    `iters[resolution]` timed runs after `warmup` untimed ones (keep Full HD few on CPU)."""
    from dakd_core.export import measure_throughput
    from dakd_core.models import count_parameters, create_model

    runtimes = runtimes or runtimes_for(device)
    rows = []
    jobs = [(m, rt) for m in model_names for rt in runtimes]
    for name, rt in tqdm(jobs, desc="throughput", disable=no_progress()):
        torch.manual_seed(0)
        model = create_model(name).eval().to(device)
        predictor = build_predictor(model, rt, device)
        for hw in resolutions:
            example = torch.rand(batch_size, 3, *hw) * 255
            timing = measure_throughput(predictor, example, warmup, iters[hw], device)
            rows.append({
                "model": name, "parameters": count_parameters(model), "device": device.type,
                "runtime": rt.name, "precision": rt.precision, "resolution": f"{hw[0]}x{hw[1]}",
                "batch_size": batch_size, "iters": iters[hw],
                "latency_ms": round(timing["latency_ms"], 4), "fps": round(timing["throughput_img_s"], 3),
            })
        del model, predictor
    return rows


def read_miou(uri: str, model: str | None = None) -> float:
    """mIoU (fraction) from a metrics.json of `dakd evaluate` ({"models": {name: {"miou"}}}; `model`
    picks the entry, optional when there is one) or of `dakd score` (top-level "miou")."""
    from dakd_core.storage import read_bytes

    try:
        doc = json.loads(read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{uri} is not a JSON metrics file: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("models"), dict):
        entries = doc["models"]
        if model is None and len(entries) == 1:
            model = next(iter(entries))
        if model not in entries:
            raise DataError(f"{uri} has no model '{model}' (it has {sorted(entries)}); pass NAME=URI#MODEL")
        value = entries[model].get("miou")
    elif isinstance(doc, dict):
        value = doc.get("miou")
    else:
        value = None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{uri} has no numeric 'miou'")
    return float(value)


def latency_vs_miou(points: list[dict], title: str):
    """Scatter of latency (ms, log x) against mIoU (%): one marker per network, students as circles
    and teachers as squares, labelled with name and runtime. `points`: dicts with
    model, role ("student"|"teacher"), latency_ms, miou (fraction), runtime."""
    from dakd_core.evaluation.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for role, marker in (("student", "o"), ("teacher", "s")):
        sel = [p for p in points if p["role"] == role]
        if sel:
            ax.scatter([p["latency_ms"] for p in sel], [p["miou"] * 100 for p in sel], marker=marker, s=60, label=role)
    for p in points:
        ax.annotate(f"{p['model']} ({p['runtime']})", (p["latency_ms"], p["miou"] * 100),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per image (ms, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def fastest(rows: list[dict], model: str, resolution: str) -> dict:
    """The lowest-latency row of `model` at `resolution` (any runtime and precision)."""
    sel = [r for r in rows if r["model"] == model and r["resolution"] == resolution]
    if not sel:
        raise DataError(f"no throughput row for {model} at {resolution}")
    return min(sel, key=lambda r: r["latency_ms"])


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | params (M) | device | runtime | precision | resolution | latency (ms) | FPS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.2f} | {r['device']} | {r['runtime']} | "
                     f"{r['precision']} | {r['resolution']} | {r['latency_ms']:.1f} | {r['fps']:.2f} |")
    return "\n".join(lines)


def publish(out: str, rows: list[dict], points: list[dict], plot_resolution: str) -> dict:
    """Write realtime.md, latency_vs_miou.png (with mIoU points) and realtime.json LAST."""
    from dakd_core.evaluation.plots import figure_png
    from dakd_core.storage import open_store

    store = open_store(out)
    files = {"table": store.put_bytes("realtime.md", (markdown_table(rows) + "\n").encode())}
    if points:
        fig = latency_vs_miou(points, f"latency at {plot_resolution} vs mIoU ({rows[0]['device']})")
        files["plot"] = store.put_bytes("latency_vs_miou.png", figure_png(fig))
    doc = {"rows": rows, "points": points, "plot_resolution": plot_resolution, "files": files}
    store.put_bytes("realtime.json", json.dumps(doc, indent=2).encode())
    return doc
