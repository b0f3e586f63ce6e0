"""Export: ONNX FP32/FP16 + FP16 torch.export of deeplabv2_tiny, eager/ONNX parity, sha256 checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dakd_core.errors import DakdError
from dakd_core.evaluation.inference import load_predictor, predict_logits
from dakd_core.export import ONNX_FP16, ONNX_FP32, TORCH_FP16, ExportConfig, load_torch_program
from dakd_core.export import run as export

H, W = 32, 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload, save_checkpoint

    torch.manual_seed(0)
    model = create_model("deeplabv2_tiny")
    # Non-trivial BatchNorm statistics, so a normalisation or eval-mode mistake shows in the logits.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, H, W) * 2 + 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "student.pt"
    return save_checkpoint(str(path), make_payload(model, step=1))


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    cfg = ExportConfig(model=checkpoint, out=str(out), resolution=(H, W), warmup=0, iters=2, log_mlflow=False)
    return export(cfg), out


def test_export_writes_artifacts_and_sha256_record(exported):
    result, out = exported
    record = json.loads((out / "export.json").read_text())
    assert record == result.record
    assert set(record["artifacts"]) == {"onnx_fp32", "onnx_fp16", "torch_fp16"}
    for entry in record["artifacts"].values():
        data = (out / entry["file"]).read_bytes()
        import hashlib

        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert record["opset"] >= 17 and record["onnx_vs_eager_max_logit_diff"] < 1e-3
    assert record["num_parameters"] > 0
    for name in ("onnx_fp32", "onnx_fp16", "torch_fp32"):
        assert record["latency"][name]["latency_ms"] > 0 and record["latency"][name]["throughput_img_s"] > 0


def test_onnx_graphs_are_dynamic_and_fp16_keeps_float32_io(exported):
    _, out = exported
    for file_name in (ONNX_FP32, ONNX_FP16):
        model = onnx.load(out / file_name)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        (inp,), (outp,) = model.graph.input, model.graph.output
        for value in (inp, outp):
            dims = value.type.tensor_type.shape.dim
            assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, C fixed, H, W
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    half = onnx.load(out / ONNX_FP16)
    types = {t.data_type for t in half.graph.initializer if len(t.dims) > 1}
    assert types == {onnx.TensorProto.FLOAT16}


def _image(seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_onnx_and_eager_paths_give_the_same_predictions(exported, checkpoint):
    _, out = exported
    cpu = torch.device("cpu")
    eager = load_predictor(checkpoint, cpu)
    onnx32 = load_predictor(str(out / ONNX_FP32), cpu)
    onnx16 = load_predictor(str(out / ONNX_FP16), cpu)
    image = _image()
    ref = predict_logits(eager, image, (H, W))
    got = predict_logits(onnx32, image, (H, W))
    assert ref.shape == got.shape == (1, 19, H, W)
    assert float((ref - got).abs().max()) < 1e-3
    assert torch.equal(ref.argmax(1), got.argmax(1))
    # a different image size than the export example: dynamic H/W, plus upsampling to label size
    big = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert torch.equal(predict_logits(eager, big, (24, 40)).argmax(1), predict_logits(onnx32, big, (24, 40)).argmax(1))
    half = predict_logits(onnx16, image, (H, W))
    assert float((half.softmax(1) - ref.softmax(1)).abs().max()) < 1e-2
    assert float((half.argmax(1) == ref.argmax(1)).float().mean()) > 0.99


def test_torch_fp16_program_matches_eager(exported, checkpoint):
    _, out = exported
    program = load_torch_program((out / TORCH_FP16).read_bytes(), torch.device("cpu"))
    x = torch.from_numpy(_image()).permute(2, 0, 1)[None].float().repeat(3, 1, 1, 1)
    with torch.no_grad():
        got = program(x)
        ref = load_predictor(checkpoint, torch.device("cpu"))(x)
    assert got.dtype == torch.float32 and got.shape == (3, 19, H, W)
    assert float((got.softmax(1) - ref.softmax(1)).abs().max()) < 1e-2


def test_sliding_window_covers_the_image(exported, checkpoint):
    eager = load_predictor(checkpoint, torch.device("cpu"))
    image = _image()
    tiled = predict_logits(eager, image, (H, W), window=(H, 40), stride=(H, 24))
    assert tiled.shape == (1, 19, H, W) and torch.isfinite(tiled).all()
    # a single tile covering the image is the whole-image prediction
    whole = predict_logits(eager, image, (H, W), window=(H, W))
    assert torch.allclose(whole, predict_logits(eager, image, (H, W)))


def test_sha256_mismatch_and_unrecorded_artifacts_are_refused(exported, tmp_path):
    _, out = exported
    tampered_dir = tmp_path / "tampered"
    tampered_dir.mkdir()
    data = bytearray((out / ONNX_FP32).read_bytes())
    data[-1] ^= 0xFF  # last byte of the last initializer: still a loadable graph
    (tampered_dir / ONNX_FP32).write_bytes(bytes(data))
    (tampered_dir / "export.json").write_text((out / "export.json").read_text())
    with pytest.raises(DakdError, match="sha256 mismatch"):
        load_predictor(str(tampered_dir / ONNX_FP32), torch.device("cpu"))
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes((out / ONNX_FP32).read_bytes())
    with pytest.raises(DakdError, match="no recorded sha256"):
        load_predictor(str(lonely), torch.device("cpu"))
    # an explicit, correct hash is accepted
    import hashlib

    good = hashlib.sha256(lonely.read_bytes()).hexdigest()
    assert load_predictor(str(lonely), torch.device("cpu"), expected_sha256=good).kind == "onnx"


def test_export_of_a_missing_checkpoint_publishes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DakdError):
        export(ExportConfig(model=str(tmp_path / "nope.pt"), out=str(out), log_mlflow=False))
    assert not Path(out, "export.json").exists()
