"""`dakd export`: the deployable student as ONNX FP32, ONNX FP16 and an FP16 torch.export program.

All three artifacts are `evaluation.inference.DeployedSegmenter`: RGB float32 N x 3 x H x W on the
0..255 scale in (normalisation is inside the graph), float32 main-head logits N x C x H x W at the
input resolution out. Batch, height and width are dynamic.

- `student_fp32.onnx`: legacy TorchScript exporter (fast), opset >= 17.
- `student_fp16.onnx`: onnxruntime's float16 converter with `keep_io_types=True`: weights and
  compute in float16, the graph's input and output stay float32 (casts at the edges), so every
  consumer feeds the same float32 tensor to either precision.
- `student_fp16.pt2`: `torch.export` of the module with the network in float16 (the AMP/FP16
  PyTorch artifact; float32 in and out). Load with `torch.export.load(path).module()`.

Before anything is written: FP32 ONNX vs eager parity, FP16 vs FP32 parity on a validation manifest
(max probability difference and mIoU delta; the export fails when the delta exceeds
`max_miou_delta` points) and latency/throughput at `resolution` on the current device. Artifacts
are then written, MLflow gets the models, and `export.json` (sha256 of every artifact) goes last.
"""

from __future__ import annotations

import copy
import io
import json
import statistics
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm import tqdm

from dakd_core.config import HW, StrictConfig
from dakd_core.errors import DakdError, DataError
from dakd_core.evaluation.inference import (
    EXPORT_RECORD,
    DeployedSegmenter,
    OnnxPredictor,
    TorchPredictor,
    no_progress,
    predict_logits,
    resolve_device,
    sha256_hex,
)
from dakd_core.evaluation.metrics import SegmentationMetrics, miou_from_confusion

# Names of the MLflow logged models of the export run, per export.json artifact kind; `dakd
# register` registers the one of its --artifact (export.json's "mlflow" lists their URIs).
LOGGED_MODEL_NAMES = {"onnx_fp32": "student_onnx_fp32", "onnx_fp16": "student_onnx_fp16"}
ONNX_FP32 = "student_fp32.onnx"
ONNX_FP16 = "student_fp16.onnx"
TORCH_FP16 = "student_fp16.pt2"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportConfig(StrictConfig):
    model: str = Field(description="dakd checkpoint URI of the student")
    out: str = Field(description="directory or store URI receiving the artifacts and export.json")
    opset: int = Field(17, ge=17, description="ONNX opset, 17 up to what the exporter writes (max_onnx_opset)")
    val_manifest: str | None = Field(None, description="manifest for the FP16 vs FP32 parity check")
    parity_samples: int | None = Field(None, gt=0, description="use at most this many manifest rows")
    max_miou_delta: float = Field(0.1, ge=0, description="largest allowed |mIoU16 - mIoU32| in points")
    resolution: HW = Field((512, 1024), description="(H, W) for latency and parity")
    batch_size: int = Field(1, gt=0, description="batch of the latency measurement")
    warmup: int = Field(3, ge=0)
    iters: int = Field(20, gt=0)
    device: str = "auto"
    log_mlflow: bool = True

    @field_validator("opset")
    @classmethod
    def _known_opset(cls, opset: int) -> int:
        # Checked here, not left to torch.onnx: an opset it cannot write is a ValueError traceback
        # from deep inside the exporter, after the model has been loaded.
        if opset > max_onnx_opset():
            raise ValueError(f"opset {opset} is newer than {max_onnx_opset()}, the newest the ONNX exporter "
                             f"of torch {torch.__version__} writes")
        return opset


def max_onnx_opset() -> int:
    """The newest opset the (TorchScript) exporter used by `export_onnx` can write."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as newest
    except ImportError:  # a private module; 20 in the pinned torch (requirements/constraints.txt)
        newest = 20
    return int(newest)


@dataclass
class ExportResult:
    record_uri: str
    record: dict


# ---------------------------------------------------------------- building the artifacts


def export_onnx(module: DeployedSegmenter, opset: int = 17, example_hw: tuple[int, int] = (64, 64)) -> bytes:
    """ONNX bytes of `module` (CPU, float32), dynamic batch/height/width."""
    module = module.cpu().eval()
    example = torch.rand(1, 3, *example_hw) * 255
    buffer = io.BytesIO()
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
        )
    import onnx

    graph_model = onnx.load_from_string(buffer.getvalue())
    # Shape inference through Resize leaves the class axis symbolic; it is fixed, say so.
    class_dim = graph_model.graph.output[0].type.tensor_type.shape.dim[1]
    class_dim.Clear()
    class_dim.dim_value = int(module.model.num_classes)
    onnx.checker.check_model(graph_model)
    return graph_model.SerializeToString()


def onnx_to_fp16(model_bytes: bytes) -> bytes:
    """Float16 weights and compute, float32 graph input/output (see module docstring)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
    _sort_topologically(half.graph)
    onnx.checker.check_model(half)
    return half.SerializeToString()


def _sort_topologically(graph) -> None:
    """The converter appends its input casts at the end of the node list; ONNX wants producers
    before consumers (the checker and some runtimes insist). Stable Kahn ordering, in place."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise DakdError("float16 ONNX graph has a cycle or an undefined input")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def export_torch_fp16(model: torch.nn.Module, example_hw: tuple[int, int] = (64, 64)) -> bytes:
    """torch.export program (bytes of a .pt2) of the FP16 deployed module, dynamic N/H/W."""
    from torch.export import Dim, export

    module = DeployedSegmenter(copy.deepcopy(model).cpu().eval(), half=True).eval()
    # batch 2: an example batch of 1 would specialise the batch dimension to 1
    example = torch.rand(2, 3, *example_hw) * 255
    dims = {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    program = export(module, (example,), dynamic_shapes={"image": dims})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def load_torch_program(data: bytes, device: torch.device) -> torch.nn.Module:
    """The FP16 program as a module on `device`. torch.export's device pass, not `.module().to()`:
    the program's lifted constants (the normalisation mean/std) and its `_assert_tensor_metadata`
    nodes carry the export's device (cpu), which `.to()` leaves behind ("Tensor on device cpu is
    not on the expected device cuda:0")."""
    from torch.export.passes import move_to_device_pass

    program = torch.export.load(io.BytesIO(data))
    return move_to_device_pass(program, device).module()


def onnx_provider(predictor: OnnxPredictor) -> str:
    """The execution provider ONNX Runtime actually runs `predictor` on. A CUDA provider that
    cannot load (no libcudnn, CPU-only onnxruntime) falls back to the CPU with a warning only, so
    a timing is labelled with this, never with the provider that was asked for."""
    return predictor.session.get_providers()[0]


# ---------------------------------------------------------------- checks and measurements


def parity_on_manifest(
    reference, candidate, manifest_uri: str, resolution: tuple[int, int], max_rows: int | None = None
) -> dict:
    """Max |p_ref - p_cand| over all pixels and the mIoU of both predictors (fractions)."""
    from dakd_core.data.manifest import read_manifest, read_row_image, read_row_label
    from dakd_core.labels import IGNORE_INDEX, NUM_CLASSES

    rows = [r for r in read_manifest(manifest_uri) if r.get("label_uri")][:max_rows]
    if not rows:
        raise DataError(f"parity manifest {manifest_uri} has no labelled rows")
    acc_ref = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    acc_cand = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    max_diff, agree, pixels = 0.0, 0, 0
    for row in tqdm(rows, desc="export parity", unit="img", disable=no_progress()):
        image = read_row_image(row, manifest_uri)
        label = torch.from_numpy(read_row_label(row, manifest_uri)).unsqueeze(0)
        p_ref = predict_logits(reference, image, label.shape[-2:], resolution).softmax(1).cpu()
        p_cand = predict_logits(candidate, image, label.shape[-2:], resolution).softmax(1).cpu()
        max_diff = max(max_diff, float((p_ref - p_cand).abs().max()))
        agree += int((p_ref.argmax(1) == p_cand.argmax(1)).sum())
        pixels += label.numel()
        acc_ref.update(p_ref.argmax(1), label)
        acc_cand.update(p_cand.argmax(1), label)
    if int(acc_ref.cm.sum()) == 0:
        # Both mIoUs would be NaN and NaN > max_miou_delta is False: the gate would pass unchecked.
        raise DataError(f"parity manifest {manifest_uri}: every label pixel of its {len(rows)} rows is void "
                        "(255), so FP16 and FP32 cannot be compared on it")
    miou_ref, miou_cand = miou_from_confusion(acc_ref.cm), miou_from_confusion(acc_cand.cm)
    return {
        "samples": len(rows),
        "max_prob_diff": max_diff,
        "argmax_agreement": agree / pixels,
        "miou_fp32": miou_ref,
        "miou_fp16": miou_cand,
        "miou_delta_points": abs(miou_cand - miou_ref) * 100,
    }


def measure_throughput(fn, example: torch.Tensor, warmup: int, iters: int, device: torch.device) -> dict:
    """Median latency (ms per batch) and throughput (images/s) of `fn(example)`."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn(example)
        sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn(example)
            sync()
            times.append(time.perf_counter() - start)
    latency = statistics.median(times)
    return {"latency_ms": latency * 1e3, "throughput_img_s": example.shape[0] / latency}


def _latencies(model, onnx32: bytes, onnx16: bytes, torch16: bytes, cfg: ExportConfig, device) -> dict:
    """Every artifact that runs well on this device, at cfg.resolution. The input is made on the
    device beforehand (no host-to-device copy timed); every torch model is moved there."""
    example = (torch.rand(cfg.batch_size, 3, *cfg.resolution) * 255).to(device)
    runs, providers = {}, {}
    if device.type in ("cpu", "cuda"):  # the devices ONNX Runtime has providers for
        for name, data, source in (("onnx_fp32", onnx32, ONNX_FP32), ("onnx_fp16", onnx16, ONNX_FP16)):
            runs[name] = OnnxPredictor(data, device, source)
            providers[name] = onnx_provider(runs[name])
    runs["torch_fp32"] = TorchPredictor(DeployedSegmenter(copy.deepcopy(model)).eval().to(device), device, amp=False)
    if device.type != "cpu":  # FP16 speed is an accelerator's property; on CPU half kernels are slow
        runs["torch_amp"] = TorchPredictor(DeployedSegmenter(copy.deepcopy(model)).eval().to(device), device, amp=True)
        runs["torch_fp16_pt2"] = load_torch_program(torch16, device)
    out = {}
    for name, fn in tqdm(runs.items(), desc="latency", disable=no_progress()):
        out[name] = measure_throughput(fn, example, cfg.warmup, cfg.iters, device)
        if name in providers:
            out[name]["provider"] = providers[name]
    return {"device": str(device), "resolution": list(cfg.resolution), "batch_size": cfg.batch_size, **out}


# ---------------------------------------------------------------- the stage


def run(cfg: ExportConfig) -> ExportResult:
    from dakd_core.models import count_parameters
    from dakd_core.models.checkpoint import load_model
    from dakd_core.storage import open_store

    device = resolve_device(cfg.device)
    model, meta = load_model(cfg.model, map_location="cpu")
    model.eval()
    eager = DeployedSegmenter(model).eval()
    onnx32 = export_onnx(eager, cfg.opset)
    onnx16 = onnx_to_fp16(onnx32)

    # The exported graph must compute what the eager module computes (normalisation included).
    probe = torch.rand(1, 3, *cfg.resolution) * 255
    with torch.no_grad():
        eager_logits = eager(probe)
    onnx_logits = OnnxPredictor(onnx32, torch.device("cpu"), ONNX_FP32)(probe)
    graph_diff = float((eager_logits - onnx_logits).abs().max())
    if graph_diff > 1e-3 * max(1.0, float(eager_logits.abs().max())):
        raise DakdError(f"ONNX export of {cfg.model} diverges from the eager model: max |logit diff| {graph_diff:.3g}")

    record: dict = {
        "format": "dakd-export/1",
        "checkpoint": cfg.model,
        "model_name": meta.get("model_name", getattr(model, "name", "")),
        "num_classes": int(model.num_classes),
        "num_parameters": count_parameters(model),
        "opset": cfg.opset,
        "io": {"input": f"{INPUT_NAME}: float32 N x 3 x H x W RGB 0..255", "output": f"{OUTPUT_NAME}: float32 N x C x H x W"},
        "onnx_vs_eager_max_logit_diff": graph_diff,
    }
    if cfg.val_manifest:
        fp32 = OnnxPredictor(onnx32, device, ONNX_FP32)
        fp16 = OnnxPredictor(onnx16, device, ONNX_FP16)
        parity = parity_on_manifest(fp32, fp16, cfg.val_manifest, cfg.resolution, cfg.parity_samples)
        parity["manifest"] = cfg.val_manifest
        record["parity"] = parity
        if parity["miou_delta_points"] > cfg.max_miou_delta:
            raise DakdError(
                f"FP16 export of {cfg.model} changes mIoU by {parity['miou_delta_points']:.3f} points on "
                f"{cfg.val_manifest} (max_miou_delta {cfg.max_miou_delta}); nothing was published"
            )
    torch16 = export_torch_fp16(model)  # after the parity gate: the slowest step
    record["latency"] = _latencies(model, onnx32, onnx16, torch16, cfg, device)

    out = open_store(cfg.out)
    record["artifacts"] = {}
    for kind, file_name, data in (
        ("onnx_fp32", ONNX_FP32, onnx32),
        ("onnx_fp16", ONNX_FP16, onnx16),
        ("torch_fp16", TORCH_FP16, torch16),
    ):
        uri = out.put_bytes(file_name, data)
        record["artifacts"][kind] = {"file": file_name, "uri": uri, "sha256": sha256_hex(data), "bytes": len(data)}
    if cfg.log_mlflow:
        record["mlflow"] = _log_mlflow(model, onnx32, onnx16, torch16, record)
    record_uri = out.put_bytes(EXPORT_RECORD, json.dumps(record, indent=2).encode())  # last
    return ExportResult(record_uri, record)


def model_signature(num_classes: int):
    """Signature with dynamic batch/height/width (-1), float32 in and out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1), OUTPUT_NAME)]),
    )


def _log_mlflow(model, onnx32: bytes, onnx16: bytes, torch16: bytes, record: dict) -> dict:
    """ONNX models via mlflow.onnx, the eager module via mlflow.pytorch (pickle: the pt2 format would
    freeze the input shape), the FP16 program as a plain artifact; returns the logged model URIs."""
    import mlflow
    import onnx

    from dakd_core import tracking

    signature = model_signature(record["num_classes"])
    logged = {}
    with tracking.stage_run("export", params={"checkpoint": record["checkpoint"], "opset": record["opset"]}):
        for name, data in ((LOGGED_MODEL_NAMES["onnx_fp32"], onnx32), (LOGGED_MODEL_NAMES["onnx_fp16"], onnx16)):
            info = mlflow.onnx.log_model(
                onnx.load_from_string(data),
                name=name,
                signature=signature,
                save_as_external_data=False,  # one file, byte-identical to the exported artifact
                pip_requirements=["onnx", "onnxruntime"],
            )
            logged[name] = info.model_uri
        info = mlflow.pytorch.log_model(
            DeployedSegmenter(copy.deepcopy(model)).eval(),
            name="student_pytorch",
            signature=signature,
            serialization_format="pickle",
            pip_requirements=["torch", "dakd"],  # the pickled module's classes live in dakd_core
        )
        logged["student_pytorch"] = info.model_uri
        tracking.log_bytes(torch16, TORCH_FP16)
        scalars = {"num_parameters": record["num_parameters"], "onnx_vs_eager_max_logit_diff": record["onnx_vs_eager_max_logit_diff"]}
        for key, value in record.get("parity", {}).items():
            if isinstance(value, (int, float)):
                scalars[f"parity.{key}"] = value
        for name, m in record["latency"].items():
            if isinstance(m, dict):  # numbers; the ONNX rows' provider is in export_summary.json
                scalars.update({f"{name}.{k}": v for k, v in m.items() if isinstance(v, (int, float))})
        tracking.log_metrics(scalars)
        tracking.log_dict(record, "export_summary.json")
        logged["run_id"] = mlflow.active_run().info.run_id
    return logged
