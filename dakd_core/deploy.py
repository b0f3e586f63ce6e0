"""`dakd deploy`: a Triton Inference Server model repository from a registered student.

    OUT/<model>/config.pbtxt      platform, max_batch_size, dynamic batching, input/output tensors
    OUT/<model>/1/model.onnx      the ONNX student, byte-identical to the registered artifact
                                  (or 1/model.plan, a TensorRT engine, with `tensorrt`)

The model is a registry version (`NAME@ALIAS`, `NAME/VERSION`, with or without `models:/`) or an
`.onnx` URI with its export.json beside it; its bytes are checked against the recorded sha256. The
tensors of config.pbtxt are read from the ONNX graph, not assumed: names, element types (the FP16
export keeps float32 input and output, so its config says TYPE_FP32) and dims, -1 where the graph's
axis is symbolic (`dakd export` makes batch, height and width dynamic). The first axis is the batch
axis Triton's dynamic batcher fills, so it is left out of `dims` and must be symbolic.

The repository is built in a temporary directory beside its destination, checked (ONNX Runtime
runs it with the declared names, types and shapes at batch 2), logged to MLflow when the model came
from the registry (artifacts `triton/<model>/...` of the version's run, the version tagged
`dakd.deploy.triton_uri`), and only then renamed into place: a failed deploy leaves nothing.

config.pbtxt is protobuf text format of Triton's `inference.ModelConfig`, written here (a handful
of fields; the tests parse it back against Triton's own schema from `tritonclient`). No
`instance_group`: Triton's default puts one instance on each GPU, or on the CPU when there is none.
A TensorRT plan only runs on the GPU model (and TensorRT version) that built it: build it on the
serving machine's kind of GPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from dakd_core.config import HW, StrictConfig
from dakd_core.errors import ConfigError, DakdError

ONNX_PLATFORM, TENSORRT_PLATFORM = "onnxruntime_onnx", "tensorrt_plan"
ONNX_FILE, PLAN_FILE = "model.onnx", "model.plan"
CONFIG_FILE = "config.pbtxt"
MODEL_VERSION = "1"  # Triton's version directory: one version per repository written
TAG_TRITON_URI = "dakd.deploy.triton_uri"
ARTIFACT_DIR = "triton"

# NAME@ALIAS or NAME/VERSION, optionally as a models:/ URI.
_REGISTRY_REF = re.compile(r"(?:models:/)?(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")
# Triton model names become directory names (and URL path segments of its HTTP API).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# ONNX TensorProto element type name -> Triton DataType.
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16",
    "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64",
    "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING",
}
# The same Triton types as numpy dtypes (the ONNX Runtime check feeds them).
NUMPY_TYPES = {
    "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64,
    "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64,
    "TYPE_BOOL": np.bool_,
}


class DeployConfig(StrictConfig):
    model: str = Field(description="NAME@ALIAS, NAME/VERSION (registry, with or without models:/) or an .onnx URI")
    out: str = Field(description="Triton model repository directory (local path, file:// or pvc://)")
    name: str | None = Field(None, description="Triton model name (None: the registered model name, "
                                               "or the .onnx file's stem)")
    max_batch_size: int = Field(8, gt=0, description="largest batch Triton's dynamic batcher forms")
    max_queue_delay_us: int = Field(
        100, ge=0, description="how long a request may wait for others to batch with (microseconds)")
    overwrite: bool = Field(False, description="replace an existing non-empty OUT/<name>")
    tensorrt: bool = Field(False, description="build a TensorRT engine (model.plan) instead of "
                                              "serving the ONNX model (needs CUDA and tensorrt)")
    trt_min_hw: HW = Field((256, 256), description="smallest (H, W) the TensorRT engine accepts")
    trt_opt_hw: HW = Field((512, 1024), description="(H, W) TensorRT optimises for")
    trt_max_hw: HW = Field((1024, 2048), description="largest (H, W) the TensorRT engine accepts")
    log_mlflow: bool = Field(True, description="log the repository with the registry version and tag it")

    @model_validator(mode="after")
    def _trt_sizes_ordered(self) -> "DeployConfig":
        for i, axis in enumerate(("height", "width")):
            if not self.trt_min_hw[i] <= self.trt_opt_hw[i] <= self.trt_max_hw[i]:
                raise ValueError(f"trt_min_hw <= trt_opt_hw <= trt_max_hw must hold for the {axis}, got "
                                 f"{self.trt_min_hw[i]}, {self.trt_opt_hw[i]}, {self.trt_max_hw[i]}")
        return self


@dataclass(frozen=True)
class TensorSpec:
    """A config.pbtxt input/output: dims without the batch axis, -1 where dynamic."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass
class DeployResult:
    model_dir: Path
    model_name: str
    platform: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str  # what was deployed, as a person reads it
    sha256: str  # of the ONNX model deployed (or built into the plan)
    registry: dict = field(default_factory=dict)  # name, version, run_id, triton_uri when from the registry


# ---------------------------------------------------------------- reading the graph


def graph_tensors(model_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an ONNX model as Triton declares them with max_batch_size > 0: the first
    axis (batch) dropped, which must be dynamic; other symbolic axes -1."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    weights = {t.name for t in graph.initializer}  # old exporters list weights as inputs too

    def spec(value, kind: str) -> TensorSpec:
        tensor = value.type.tensor_type
        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if type_name not in _TRITON_TYPES:
            raise DakdError(f"ONNX {kind} '{value.name}' has element type {type_name}, which Triton has no type for")
        if not tensor.HasField("shape") or not tensor.shape.dim:
            raise DakdError(f"ONNX {kind} '{value.name}' has no shape; Triton needs at least a batch axis")
        batch, *rest = tensor.shape.dim
        if batch.HasField("dim_value"):
            raise DakdError(
                f"ONNX {kind} '{value.name}' has a fixed batch axis ({batch.dim_value}); dynamic batching "
                "needs it symbolic (re-export with `dakd export`, which makes batch, height and width dynamic)")
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in rest)
        return TensorSpec(value.name, _TRITON_TYPES[type_name], dims)

    inputs = [spec(v, "input") for v in graph.input if v.name not in weights]
    outputs = [spec(v, "output") for v in graph.output]
    return inputs, outputs


# ---------------------------------------------------------------- config.pbtxt


def _quote(text: str) -> str:
    if any(ord(c) < 32 for c in text):
        raise DakdError(f"tensor or model name {text!r} contains control characters")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(field_name: str, specs: list[TensorSpec]) -> list[str]:
    lines = [f"{field_name} ["]
    for i, s in enumerate(specs):
        lines += [
            "  {",
            f"    name: {_quote(s.name)}",
            f"    data_type: {s.data_type}",
            f"    dims: [ {', '.join(str(d) for d in s.dims)} ]",
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    return lines + ["]"]


def model_config_text(name: str, platform: str, max_batch_size: int, inputs: list[TensorSpec],
                      outputs: list[TensorSpec], max_queue_delay_us: int) -> str:
    """Triton's ModelConfig in protobuf text format."""
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(platform)}",
        f"max_batch_size: {max_batch_size}",
        *_tensor_block("input", inputs),
        *_tensor_block("output", outputs),
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- resolving the model


@dataclass
class _Source:
    data: bytes
    sha256: str
    description: str
    default_name: str
    version: object | None = None  # the MLflow ModelVersion when from the registry


def _registry_uri(model: str) -> str | None:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` for a registry reference, else None."""
    if model.lower().endswith(".onnx"):
        return None
    m = _REGISTRY_REF.fullmatch(model)
    if m is None:
        raise ConfigError(f"field 'model': {model!r} is neither NAME@ALIAS, NAME/VERSION (optionally "
                          "models:/...) nor an .onnx URI")
    ref = f"{m['name']}@{m['alias']}" if m["alias"] else f"{m['name']}/{m['version']}"
    return f"models:/{ref}"


def _resolve(model: str) -> _Source:
    from dakd_core.evaluation.inference import (
        download_registry_onnx,
        recorded_sha256,
        sha256_hex,
        verify_sha256,
    )

    uri = _registry_uri(model)
    if uri is None:
        from dakd_core.storage import read_bytes

        data = read_bytes(model)
        sha = verify_sha256(data, recorded_sha256(model), model)
        stem = model.rstrip("/").rpartition("/")[2][: -len(".onnx")]
        return _Source(data, sha, model, stem)
    import mlflow

    from dakd_core.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())  # dakd's default store when MLFLOW_TRACKING_URI is unset
    data, version, description = download_registry_onnx(uri)
    return _Source(data, sha256_hex(data), description, version.name, version)


# ---------------------------------------------------------------- TensorRT


def tensorrt_unavailable() -> str | None:
    """Why a TensorRT engine cannot be built here (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    try:
        import tensorrt  # noqa: F401  (its CUDA libraries load here)
    except (ImportError, OSError) as e:
        return f"tensorrt does not import: {e}"
    return None


def build_tensorrt_plan(onnx_bytes: bytes, inputs: list[TensorSpec], cfg: DeployConfig) -> bytes:
    """A serialized TensorRT engine of the ONNX model, one optimisation profile over batch
    1..max_batch_size and (H, W) trt_min_hw..trt_max_hw.

    The network is strongly typed: the FP16 ONNX graph already says which layers run in float16
    and TensorRT keeps exactly those types (TensorRT 11 has no other mode; 9-10 need the
    STRONGLY_TYPED flag; 8 knows only the weak FP16 builder flag)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation = trt.NetworkDefinitionCreationFlag
    flag = getattr(creation, "STRONGLY_TYPED", None)
    if flag is None:
        flag = getattr(creation, "EXPLICIT_BATCH", None)  # TensorRT 8: ONNX networks need it
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DakdError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    if not hasattr(creation, "STRONGLY_TYPED") and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for spec in inputs:
        shapes = [_profile_shape(spec, batch, hw)
                  for batch, hw in ((1, cfg.trt_min_hw), (max(1, cfg.max_batch_size // 2), cfg.trt_opt_hw),
                                    (cfg.max_batch_size, cfg.trt_max_hw))]
        profile.set_shape(spec.name, *shapes)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DakdError("TensorRT failed to build the engine (see its log above)")
    return bytes(plan)


def _profile_shape(spec: TensorSpec, batch: int, hw: tuple[int, int]) -> tuple[int, ...]:
    """Batch + dims with the dynamic axes filled: the last two dynamic axes are H and W."""
    dims = list(spec.dims)
    dynamic = [i for i, d in enumerate(dims) if d == -1]
    if len(dynamic) > 2:
        raise DakdError(f"input '{spec.name}' has {len(dynamic)} dynamic axes besides the batch; "
                        "a TensorRT profile here fills only height and width")
    for i, size in zip(dynamic, hw[-len(dynamic):] if dynamic else ()):
        dims[i] = size
    return (batch, *dims)


# ---------------------------------------------------------------- checking and writing


def check_with_onnxruntime(onnx_bytes: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
                           batch: int = 2, hw: tuple[int, int] = (64, 64)) -> None:
    """Run the model with the names, types and shapes config.pbtxt declares; DakdError when the
    graph disagrees (ONNX Runtime refuses the feed, or an output's shape or type differs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feed = {}
    for spec in inputs:
        if spec.data_type not in NUMPY_TYPES:
            return  # string/bf16 inputs: nothing sensible to feed; the graph itself was read above
        shape = _profile_shape(spec, batch, hw)
        feed[spec.name] = np.zeros(shape, dtype=NUMPY_TYPES[spec.data_type])
    try:
        results = session.run([o.name for o in outputs], feed)
    except Exception as e:  # ORT's own exception types
        raise DakdError(f"ONNX Runtime rejects the declared inputs {list(feed)}: {e}") from None
    for spec, value in zip(outputs, results):
        declared = [batch, *spec.dims]
        if len(value.shape) != len(declared) or any(d not in (-1, v) for d, v in zip(declared, value.shape)):
            raise DakdError(f"output '{spec.name}' has shape {list(value.shape)}, config.pbtxt declares {declared}")
        if value.dtype != NUMPY_TYPES.get(spec.data_type, value.dtype):
            raise DakdError(f"output '{spec.name}' is {value.dtype}, config.pbtxt declares {spec.data_type}")


def _repository_root(out: str) -> Path:
    from dakd_core.storage import FileStore, open_store

    store = open_store(out)
    if not isinstance(store, FileStore):
        raise ConfigError(f"field 'out': {out!r} is not a local directory; the repository is written to a "
                          "temporary directory and renamed into place, so write it locally and copy it "
                          "to object storage afterwards (Triton reads s3:// repositories)")
    return store.root


def _check_destination(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise DakdError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise DakdError(f"{target} is not empty; pass --overwrite to replace it")


def _swap_into_place(staged: Path, target: Path, overwrite: bool) -> None:
    """Rename the staged model directory to `target`; an old one is moved aside first and removed
    after. `target` is never a mix of both: it holds the whole old repository, then (for the
    instant between the two renames) nothing, then the whole new one."""
    _check_destination(target, overwrite)  # again: another deploy may have written it meanwhile
    old = None
    if target.is_dir() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    elif target.is_dir():
        target.rmdir()
    os.rename(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _log_to_registry(model_dir: Path, model_name: str, version) -> dict:
    """Upload the repository under `triton/<model>` of the version's run, tag the version."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = version.run_id or _logged_model_run(client, version)
    if not run_id:
        raise DakdError(f"registered model {version.name} version {version.version} has no run to log the "
                        "repository to; pass --no-mlflow to deploy without logging it")
    client.log_artifacts(run_id, str(model_dir), f"{ARTIFACT_DIR}/{model_name}")
    triton_uri = f"runs:/{run_id}/{ARTIFACT_DIR}"
    client.set_model_version_tag(version.name, version.version, TAG_TRITON_URI, triton_uri)
    return {"name": version.name, "version": str(version.version), "run_id": run_id, "triton_uri": triton_uri}


def _logged_model_run(client, version) -> str | None:
    """The run that logged the version's model (`models:/m-<id>` sources; the sqlite registry
    leaves ModelVersion.run_id empty for them)."""
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
    return client.get_logged_model(match.group(1)).source_run_id if match else None


def deploy(cfg: DeployConfig) -> DeployResult:
    """Write OUT/<model>/config.pbtxt and OUT/<model>/1/model.onnx (or model.plan); see module doc."""
    root = _repository_root(cfg.out)
    if cfg.tensorrt and (reason := tensorrt_unavailable()):
        raise DakdError(f"--tensorrt needs a GPU with TensorRT ({reason}); deploy the ONNX model "
                        "without --tensorrt, or build the engine on the serving GPU")
    if cfg.name is not None and not _MODEL_NAME.fullmatch(cfg.name):
        raise ConfigError(f"field 'name': {cfg.name!r} is not a valid Triton model name (letters, digits, . _ -)")
    _registry_uri(cfg.model)  # a malformed reference fails before anything is downloaded
    if cfg.name is not None:
        _check_destination(root / cfg.name, cfg.overwrite)

    source = _resolve(cfg.model)
    name = cfg.name or re.sub(r"[^A-Za-z0-9._-]+", "_", source.default_name).lstrip("._-") or "model"
    target = root / name
    _check_destination(target, cfg.overwrite)
    inputs, outputs = graph_tensors(source.data)
    check_with_onnxruntime(source.data, inputs, outputs)
    if cfg.tensorrt:
        platform, file_name, payload = TENSORRT_PLATFORM, PLAN_FILE, build_tensorrt_plan(source.data, inputs, cfg)
    else:
        platform, file_name, payload = ONNX_PLATFORM, ONNX_FILE, source.data

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        staged = staging / name
        (staged / MODEL_VERSION).mkdir(parents=True)
        (staged / MODEL_VERSION / file_name).write_bytes(payload)
        (staged / CONFIG_FILE).write_text(
            model_config_text(name, platform, cfg.max_batch_size, inputs, outputs, cfg.max_queue_delay_us))
        registry = {}
        if cfg.log_mlflow and source.version is not None:
            registry = _log_to_registry(staged, name, source.version)
        _swap_into_place(staged, target, cfg.overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DeployResult(target, name, platform, cfg.max_batch_size, inputs, outputs, source.description,
                        source.sha256, registry)
