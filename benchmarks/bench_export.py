"""Export / evaluation throughput, as ratios measured side by side in one run.

    .venv/bin/python benchmarks/bench_export.py [--student deeplabv2_mobilenetv3]
        [--teacher deeplabv2_resnet101] [--resolution 256x512] [--iters 10]

Prints (and returns as JSON with --json):
- exported student FP16 vs FP32 throughput: ONNX Runtime on CPU, or on CUDA the FP16
  torch.export program and autocast against FP32 eager (plus ORT when the session really runs on
  its CUDA provider; the provider used is reported). On CUDA: inputs made on the GPU beforehand,
  channels-last, cudnn.benchmark on, the TF32 switches recorded (`settings`);
- student vs teacher throughput at the same resolution (eager FP32, AMP on CUDA);
- evaluation throughput in megapixels/s (the `predict_logits` + metrics loop of `dakd evaluate`).
Randomly initialised networks: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dakd_core.evaluation.inference import DeployedSegmenter, OnnxPredictor, TorchPredictor, predict_logits
from dakd_core.evaluation.metrics import SegmentationMetrics
from dakd_core.export import (
    export_onnx,
    export_torch_fp16,
    load_torch_program,
    measure_throughput,
    onnx_provider,
    onnx_to_fp16,
)
from dakd_core.models import count_parameters, create_model
from dakd_core.train.engine import default_device


def _hw(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="deeplabv2_mobilenetv3")
    p.add_argument("--teacher", default="deeplabv2_resnet101")
    p.add_argument("--resolution", type=_hw, default=(256, 512))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--eval-images", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = default_device()
    settings = cuda_settings() if device.type == "cuda" else {}
    # on the GPU the inputs are made there beforehand (no host-to-device copy timed) and, like the
    # networks, in channels-last: the layout the tensor-core convolutions want
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.manual_seed(0)
    student = create_model(args.student).eval()
    teacher = create_model(args.teacher).eval()
    x = (torch.rand(args.batch_size, 3, *args.resolution) * 255).to(device, memory_format=layout)
    t = lambda fn: measure_throughput(fn, x, warmup=2, iters=args.iters, device=device)  # noqa: E731

    def eager(model, amp: bool) -> TorchPredictor:
        return TorchPredictor(DeployedSegmenter(model).eval().to(device, memory_format=layout), device, amp=amp)

    onnx32 = export_onnx(DeployedSegmenter(student).eval())
    onnx16 = onnx_to_fp16(onnx32)
    runs = {}
    onnx = {"fp32": OnnxPredictor(onnx32, device, "fp32"), "fp16": OnnxPredictor(onnx16, device, "fp16")}
    provider = onnx_provider(onnx["fp32"])
    # ONNX rows run where ONNX Runtime really runs them: on a GPU run, a CPU fallback (CPU-only
    # onnxruntime, a CUDA provider that failed to load) is reported, not timed against a GPU goal
    onnx_timed = device.type == "cpu" or provider == "CUDAExecutionProvider"
    if onnx_timed:
        runs["student_onnx_fp32"] = t(onnx["fp32"])
        runs["student_onnx_fp16"] = t(onnx["fp16"])
    runs["student_eager_fp32"] = t(eager(student, amp=False))
    if device.type == "cuda":
        runs["student_eager_amp"] = t(eager(student, amp=True))
        runs["student_pt2_fp16"] = t(load_torch_program(export_torch_fp16(student), device))
    runs["teacher_eager_fp32"] = t(eager(teacher, amp=False))
    if device.type == "cuda":
        runs["teacher_eager_amp"] = t(eager(teacher, amp=True))

    # evaluation loop: decode-free (images in memory), logits -> softmax -> metrics on the device
    rng = np.random.default_rng(0)
    h, w = args.resolution
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.eval_images)]
    labels = [torch.from_numpy(rng.integers(0, 19, (1, h, w))).to(device) for _ in images]
    # what `dakd evaluate` would run here: the ONNX graph on CPU, eager AMP on CUDA
    if device.type == "cpu":
        predictor = onnx["fp32"]
    else:
        predictor = eager(student, amp=True)
    acc = SegmentationMetrics(19)
    start = time.perf_counter()
    for image, label in zip(images, labels):
        acc.update(predict_logits(predictor, image, (h, w)).softmax(1), label)
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_mpx_s = len(images) * h * w / 1e6 / (time.perf_counter() - start)

    fp16_key = "student_pt2_fp16" if device.type == "cuda" else "student_onnx_fp16"
    fp32_key = "student_eager_fp32" if device.type == "cuda" else "student_onnx_fp32"
    ratios = {f"{fp16_key} / {fp32_key}": (fp16_key, fp32_key)}
    if onnx_timed:
        ratios["student_onnx_fp16 / student_onnx_fp32"] = ("student_onnx_fp16", "student_onnx_fp32")
    ratios["student_eager_fp32 / teacher_eager_fp32"] = ("student_eager_fp32", "teacher_eager_fp32")
    if onnx_timed:
        ratios["student_onnx_fp32 / student_eager_fp32"] = ("student_onnx_fp32", "student_eager_fp32")
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "resolution": list(args.resolution),
        "batch_size": args.batch_size,
        "params": {"student": count_parameters(student), "teacher": count_parameters(teacher)},
        "throughput_img_s": {k: round(v["throughput_img_s"], 3) for k, v in runs.items()},
        "ratios": {name: runs[a]["throughput_img_s"] / runs[b]["throughput_img_s"] for name, (a, b) in ratios.items()},
        "evaluation_mpx_s": eval_mpx_s,
        "onnx_provider": provider if onnx_timed else f"{provider} (not timed: no CUDA provider on a GPU run)",
        "settings": settings,
    }
    if device.type == "cuda":
        result["ratios"]["student_eager_amp / student_eager_fp32"] = (  # torch AMP, what training runs
            runs["student_eager_amp"]["throughput_img_s"] / runs["student_eager_fp32"]["throughput_img_s"]
        )
        result["ratios"]["student_eager_amp / teacher_eager_amp"] = (
            runs["student_eager_amp"]["throughput_img_s"] / runs["teacher_eager_amp"]["throughput_img_s"]
        )
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return result


def cuda_settings() -> dict:
    """Turn cuDNN's autotuner on (one input shape per timing: it keeps the fastest kernels) and
    state the TF32 switches: with `cudnn_conv_tf32` (torch's default) the "FP32" convolutions run in
    TF32 on Ampere and newer, so an FP16 / FP32 ratio is against TF32 convolutions."""
    torch.backends.cudnn.benchmark = True
    return {"channels_last": True, "cudnn_benchmark": True, "cudnn_conv_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}


def _table(r: dict) -> str:
    lines = [f"device {r['device']}, {r['resolution'][0]}x{r['resolution'][1]}, batch {r['batch_size']}, params {r['params']}"]
    lines += [f"  {k:22s} {v:9.3f} img/s" for k, v in r["throughput_img_s"].items()]
    lines += [f"  {k:45s} {v:6.2f}x" for k, v in r["ratios"].items()]
    lines.append(f"  evaluation throughput {r['evaluation_mpx_s']:.3f} Mpx/s; ONNX Runtime provider {r['onnx_provider']}")
    if r["settings"]:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in r["settings"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
