"""Running a trained or exported segmenter on images: the one inference path of the project.

`DeployedSegmenter` is exactly what `dakd export` writes to ONNX / torch.export: RGB float
N x 3 x H x W in 0..255 in, main-head logits N x C x H x W (bilinearly upsampled to the input
size) out, with `dakd_core.data.transforms.normalize` inside the graph. Evaluating a checkpoint
runs the same module eagerly, so the ONNX and the eager paths cannot normalise differently.

`load_predictor(uri)` accepts a dakd checkpoint URI, an `.onnx` URI (its sha256 is checked against
the `export.json` written next to it, or an explicit hash) or an MLflow registry URI
`models:/NAME@alias` / `models:/NAME/VERSION` (checked against the version's `artifact_sha256` tag).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dakd_core.errors import DakdError

EXPORT_RECORD = "export.json"


class DeployedSegmenter(nn.Module):
    """Normalisation + network + upsampling: the deployable student as one module.

    `half=True` runs the network in float16 (the FP16 PyTorch artifact); input and output stay
    float32 so callers never care about the precision inside.
    """

    def __init__(self, model: nn.Module, half: bool = False):
        super().__init__()
        self.model = model.half() if half else model
        self.half = half

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from dakd_core.data.transforms import normalize

        x = normalize(image)
        if self.half:
            x = x.half()
        logits = self.model(x).main.float()
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def resolve_device(name: str) -> torch.device:
    """'auto' -> the engine's default device (CUDA when present, DAKD_DEVICE overrides)."""
    from dakd_core.train.engine import default_device
    from dakd_core.train.engine import resolve_device as resolve_named_device

    return default_device() if name == "auto" else resolve_named_device(name)


@dataclass
class TorchPredictor:
    """Eager PyTorch inference; autocast float16 on CUDA when `amp`."""

    module: DeployedSegmenter
    device: torch.device
    amp: bool = True
    kind: str = "torch"
    num_parameters: int = 0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32)
        use_amp = self.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            return self.module(images).float()


class OnnxPredictor:
    """ONNX Runtime inference (CUDA provider when present), float32 in and out."""

    kind = "onnx"

    def __init__(self, model_bytes: bytes, device: torch.device, source: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(model_bytes, providers=providers)
        except Exception as e:  # ORT raises its own exception types for malformed graphs
            raise DakdError(f"{source} is not a loadable ONNX model: {e}") from None
        if providers[0] != self.session.get_providers()[0]:
            # ORT's GPU build could not load its CUDA provider (a missing CUDA library, or one of
            # another CUDA major version than it was built for) and only logged it: every run would
            # silently take the CPU, many times slower, on a GPU node.
            raise DakdError(f"{source}: ONNX Runtime {ort.__version__} could not start {providers[0]} on {device} "
                            f"and would run on {self.session.get_providers()[0]} (its log above names the library "
                            "it could not load; docker/check_cuda_image.py checks an image's CUDA libraries)")
        self.input_name = self.session.get_inputs()[0].name
        self.device = device
        self.num_parameters = _onnx_parameter_count(model_bytes)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(self.device)


def _onnx_parameter_count(model_bytes: bytes) -> int:
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    return int(sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) > 0))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded_sha256(onnx_uri: str) -> str | None:
    """The sha256 that `dakd export` recorded for this artifact in the sibling export.json."""
    from dakd_core.storage import read_bytes, uri_exists

    parent, _, name = onnx_uri.rstrip("/").rpartition("/")
    record_uri = f"{parent}/{EXPORT_RECORD}"
    if not parent or not uri_exists(record_uri):
        return None
    try:
        record = json.loads(read_bytes(record_uri))
        entries = record["artifacts"].values()
    except (ValueError, KeyError, AttributeError) as e:
        raise DakdError(f"{record_uri} is not a valid export record: {e}") from None
    for entry in entries:
        if entry.get("file") == name:
            return entry.get("sha256")
    return None


def verify_sha256(data: bytes, expected: str | None, source: str) -> str:
    """Refuses an artifact whose sha256 is unknown or differs from the recorded one."""
    actual = sha256_hex(data)
    if expected is None:
        raise DakdError(
            f"no recorded sha256 for {source}: expected an {EXPORT_RECORD} next to it listing the "
            "file, a registry version tagged artifact_sha256, or an explicit hash"
        )
    if actual != expected.lower():
        raise DakdError(f"sha256 mismatch for {source}: recorded {expected}, file has {actual}")
    return actual


def download_onnx(uri: str) -> bytes:
    """The bytes of the one .onnx file of an MLflow model: `models:/NAME@alias`, `models:/NAME/3`
    or a logged model `models:/m-<id>`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            files = sorted(Path(local).rglob("*.onnx"))
            if len(files) != 1:
                raise DakdError(f"{uri} holds {len(files)} .onnx files, expected exactly one")
            return files[0].read_bytes()
    except MlflowException as e:
        raise DakdError(f"cannot download MLflow model {uri}: {e.message}") from None


def resolve_registry_version(uri: str):
    """The MLflow ModelVersion a `models:/NAME@alias` or `models:/NAME/VERSION` URI names."""
    import mlflow
    from mlflow.exceptions import MlflowException

    ref = uri[len("models:/") :]
    client = mlflow.MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, number = ref.rsplit("/", 1)
        return client.get_model_version(name, number)
    except (MlflowException, ValueError) as e:
        raise DakdError(f"cannot resolve registry model {uri}: {getattr(e, 'message', e)}") from None


def download_registry_onnx(uri: str, expected_sha256: str | None = None) -> tuple[bytes, object, str]:
    """(model bytes checked against `expected_sha256`, default the version's artifact_sha256 tag;
    the ModelVersion; source) of a `models:/` registry URI. The version is resolved once and downloaded by number, so an
    alias moved meanwhile cannot mix two versions."""
    version = resolve_registry_version(uri)
    source = f"{uri} (version {version.version})"
    data = download_onnx(f"models:/{version.name}/{version.version}")
    verify_sha256(data, expected_sha256 or version.tags.get("artifact_sha256"), source)
    return data, version, source


def load_predictor(
    uri: str, device: torch.device, amp: bool = True, expected_sha256: str | None = None
) -> TorchPredictor | OnnxPredictor:
    """A predictor for a checkpoint, an ONNX artifact or a registry model version."""
    if uri.startswith("models:/"):
        data, _version, source = download_registry_onnx(uri, expected_sha256)
        return OnnxPredictor(data, device, source)
    if uri.lower().endswith(".onnx"):
        from dakd_core.storage import read_bytes

        data = read_bytes(uri)
        verify_sha256(data, expected_sha256 or recorded_sha256(uri), uri)
        return OnnxPredictor(data, device, uri)
    from dakd_core.models import count_parameters
    from dakd_core.models.checkpoint import load_model

    model, _meta = load_model(uri, map_location=device)
    model.eval().to(device)
    return TorchPredictor(DeployedSegmenter(model), device, amp, num_parameters=count_parameters(model))


def predict_logits(
    predictor,
    image: np.ndarray,
    out_size: tuple[int, int],
    resolution: tuple[int, int] | None = None,
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Logits (1 x C x H x W, float32, on the predictor's device) of one HxWx3 uint8 RGB image.

    The image is resized to `resolution` (H, W) when given, then run whole or, with `window`, as
    overlapping tiles whose logits are averaged; logits are then bilinearly resized to `out_size`
    (the label's resolution).
    """
    from dakd_core.data.transforms import resize_pair

    image, _ = resize_pair(image, None, resolution)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float()
    if window is None:
        logits = predictor(x)
    else:
        logits = _sliding_window(predictor, x, window, stride or (window[0] // 2, window[1] // 2))
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits


def _tile_starts(length: int, win: int, step: int) -> list[int]:
    if length <= win:
        return [0]
    starts = list(range(0, length - win + 1, step))
    if starts[-1] != length - win:  # last tile flush with the border
        starts.append(length - win)
    return starts


def _sliding_window(predictor, x: torch.Tensor, window, stride) -> torch.Tensor:
    h, w = x.shape[-2:]
    wh, ww = min(window[0], h), min(window[1], w)
    total = None
    counts = torch.zeros(1, 1, h, w)
    for top in _tile_starts(h, wh, stride[0]):
        for left in _tile_starts(w, ww, stride[1]):
            tile = predictor(x[..., top : top + wh, left : left + ww])
            if total is None:
                total = torch.zeros(1, tile.shape[1], h, w, device=tile.device)
                counts = counts.to(tile.device)
            total[..., top : top + wh, left : left + ww] += tile
            counts[..., top : top + wh, left : left + ww] += 1
    return total / counts


def no_progress() -> bool:
    return os.environ.get("DAKD_NO_PROGRESS") == "1"
