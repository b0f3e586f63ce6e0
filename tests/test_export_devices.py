"""Export on an accelerator, proved on the CPU: the `meta` device stands in for CUDA (a tensor or
constant left on the CPU fails there as it would on the GPU); a CUDA provider that ONNX Runtime
lists but cannot load is an error, not a silent CPU run."""

from __future__ import annotations

import pytest
import torch

from dakd_core.errors import DakdError
from dakd_core.export import ExportConfig, _latencies, export_onnx, export_torch_fp16, load_torch_program, onnx_provider

META = torch.device("meta")


@pytest.fixture(scope="module")
def tiny():
    from dakd_core.models import create_model

    torch.manual_seed(0)
    return create_model("deeplabv2_tiny").eval()


@pytest.fixture(scope="module")
def program_bytes(tiny) -> bytes:
    return export_torch_fp16(tiny)


def test_fp16_program_moves_constants_and_device_asserts_with_it(program_bytes):
    # `.module().to(device)` left the normalisation constants and the `_assert_tensor_metadata`
    # nodes on the CPU: "Tensor on device cpu is not on the expected device meta!"
    program = load_torch_program(program_bytes, META)
    with torch.no_grad():
        out = program(torch.rand(2, 3, 32, 48, device=META))
    assert out.device == META and out.dtype == torch.float32 and out.shape == (2, 19, 32, 48)
    # the bytes still load onto the CPU, where the export was made
    cpu = load_torch_program(program_bytes, torch.device("cpu"))(torch.rand(1, 3, 32, 48) * 255)
    assert cpu.device.type == "cpu" and torch.isfinite(cpu).all()


def test_latency_table_moves_every_model_to_its_device(tiny, program_bytes, tmp_path):
    cfg = ExportConfig(model="unused", out=str(tmp_path), resolution=(32, 48), batch_size=2, warmup=1, iters=2,
                       log_mlflow=False)
    # meta: no ONNX Runtime provider, the torch models only (FP32 eager, AMP, the FP16 program);
    # before the fix the eager model stayed on the CPU while its input went to the device
    table = _latencies(tiny, b"", b"", program_bytes, cfg, META)
    assert table["device"] == "meta" and table["batch_size"] == 2
    assert set(table) - {"device", "resolution", "batch_size"} == {"torch_fp32", "torch_amp", "torch_fp16_pt2"}
    for name in ("torch_fp32", "torch_amp", "torch_fp16_pt2"):
        assert table[name]["latency_ms"] > 0 and table[name]["throughput_img_s"] > 0
    assert next(tiny.parameters()).device.type == "cpu"  # the caller's model is left where it was


def test_onnx_rows_name_the_provider_that_ran_them_and_a_cuda_provider_that_cannot_start_is_an_error(
        tiny, monkeypatch, tmp_path):
    import onnxruntime as ort

    from dakd_core.evaluation.inference import DeployedSegmenter, OnnxPredictor

    onnx32 = export_onnx(DeployedSegmenter(tiny).eval())
    # ONNX Runtime lists a CUDA provider it then cannot load (CPU wheel, a CUDA library missing or
    # of another major version): it warns and would run the session on the CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"), \
            pytest.raises(DakdError, match=r"^fp32: ONNX Runtime .* could not start CUDAExecutionProvider on cuda "
                                           r"and would run on CPUExecutionProvider"):
        OnnxPredictor(onnx32, torch.device("cuda"), "fp32")
    monkeypatch.undo()
    assert onnx_provider(OnnxPredictor(onnx32, torch.device("cpu"), "fp32")) == "CPUExecutionProvider"
    cfg = ExportConfig(model="unused", out=str(tmp_path), resolution=(32, 48), warmup=0, iters=1, log_mlflow=False)
    table = _latencies(tiny, onnx32, onnx32, b"", cfg, torch.device("cpu"))
    assert table["onnx_fp32"]["provider"] == table["onnx_fp16"]["provider"] == "CPUExecutionProvider"
    assert "torch_fp16_pt2" not in table  # no FP16 timing on the CPU
