"""`dakd deploy`: a Triton model repository from the champion of a real sqlite MLflow registry.

config.pbtxt is parsed back against Triton's own ModelConfig schema (tritonclient, test
requirement), and the written model is run with ONNX Runtime exactly as config.pbtxt declares it,
at two batch sizes and two image sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dakd_core.cli import main
from dakd_core.deploy import NUMPY_TYPES, DeployConfig, deploy, graph_tensors, model_config_text
from dakd_core.errors import DakdError
from dakd_core.evaluation.inference import sha256_hex

NAME = "dakd-gta5-to-cityscapes"


def triton_schema():
    """Triton's `inference.ModelConfig` protobuf module, shipped by tritonclient. Loaded from its
    file: `tritonclient.grpc/__init__` imports grpcio, which the schema does not need."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None, "tritonclient is a test requirement: pip install -c requirements/constraints.txt -r requirements/test.txt"
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    """config.pbtxt as a Triton ModelConfig; text_format.Parse rejects unknown fields and types."""
    from google.protobuf import text_format

    pb = triton_schema()
    return text_format.Parse(path.read_text(), pb.ModelConfig()), pb


def _export(tmp_path, log_mlflow: bool) -> dict:
    """A real `dakd export` of an untrained deeplabv2_tiny student (its record)."""
    import torch

    from dakd_core.export import ExportConfig
    from dakd_core.export import run as export
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload, save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(str(tmp_path / "student.pt"), make_payload(create_model("deeplabv2_tiny"), step=1))
    return export(ExportConfig(model=checkpoint, out=str(tmp_path / "export"), resolution=(32, 64), warmup=0,
                               iters=1, device="cpu", log_mlflow=log_mlflow)).record


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory) -> str:
    """URI of the FP16 ONNX artifact of an export without MLflow (export.json beside it)."""
    record = _export(tmp_path_factory.mktemp("export"), log_mlflow=False)
    return record["artifacts"]["onnx_fp16"]["uri"]


def _run_as_declared(model_path: Path, config, pb, batch: int, hw: tuple[int, int]) -> np.ndarray:
    """Run model.onnx feeding what config.pbtxt declares: its input name, type and dims."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = config.input, config.output
    dtype = NUMPY_TYPES[pb.DataType.Name(inp.data_type)]
    dims = list(inp.dims)
    dims[-2:] = [hw[0] if dims[-2] == -1 else dims[-2], hw[1] if dims[-1] == -1 else dims[-1]]
    rng = np.random.default_rng(batch * 1000 + hw[0])
    image = (rng.random((batch, *dims)) * 255).astype(dtype)
    (logits,) = session.run([out.name], {inp.name: image})
    assert logits.dtype == NUMPY_TYPES[pb.DataType.Name(out.data_type)]
    expected_shape = [batch] + [hw[i - len(out.dims) + 2] if d == -1 else d for i, d in enumerate(out.dims)]
    assert list(logits.shape) == expected_shape
    return image, logits


def test_repository_runs_as_its_config_declares(exported_onnx, tmp_path):
    import torch

    from dakd_core.evaluation.inference import OnnxPredictor
    from dakd_core.storage import read_bytes

    out = tmp_path / "repo"
    result = deploy(DeployConfig(model=exported_onnx, out=str(out)))
    model_dir = out / "student_fp16"
    assert result.model_dir == model_dir and sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == read_bytes(exported_onnx)  # the artifact, unchanged
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind

    config, pb = parse_config(model_dir / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("student_fp16", "onnxruntime_onnx", 8)
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    (inp,), (out_spec,) = config.input, config.output
    # the FP16 export keeps float32 input and output (keep_io_types); read from the graph
    assert (inp.name, pb.DataType.Name(inp.data_type), list(inp.dims)) == ("image", "TYPE_FP32", [3, -1, -1])
    assert (out_spec.name, pb.DataType.Name(out_spec.data_type), list(out_spec.dims)) == ("logits", "TYPE_FP32", [19, -1, -1])

    exported = OnnxPredictor(read_bytes(exported_onnx), torch.device("cpu"), exported_onnx)
    for batch in (1, 3):
        for hw in ((32, 64), (48, 40)):
            image, logits = _run_as_declared(model_dir / "1" / "model.onnx", config, pb, batch, hw)
            reference = exported(torch.from_numpy(image)).numpy()
            np.testing.assert_array_equal(logits, reference)


def test_existing_model_needs_overwrite_and_a_failed_deploy_keeps_the_old_one(exported_onnx, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repo"
    assert main(["deploy", "--model", exported_onnx, "--out", str(out), "--max-batch-size", "4"]) == 0
    model_dir = out / "student_fp16"
    old_config = (model_dir / "config.pbtxt").read_text()
    assert "max_batch_size: 4\n" in old_config

    assert main(["deploy", "--model", exported_onnx, "--out", str(out)]) == 2
    assert f"{model_dir} is not empty; pass --overwrite" in capsys.readouterr().err
    assert (model_dir / "config.pbtxt").read_text() == old_config

    import dakd_core.deploy as deploy_module

    def broken(*args, **kwargs):
        raise DakdError("disk full while writing config.pbtxt")

    with monkeypatch.context() as m:
        m.setattr(deploy_module, "model_config_text", broken)
        assert main(["deploy", "--model", exported_onnx, "--out", str(out), "--overwrite"]) == 2
    assert (model_dir / "config.pbtxt").read_text() == old_config  # the old repository, whole
    assert sorted(p.name for p in out.iterdir()) == ["student_fp16"]  # and no staging directory

    assert main(["deploy", "--model", exported_onnx, "--out", str(out), "--overwrite", "--name", "student_fp16"]) == 0
    assert "max_batch_size: 8\n" in (model_dir / "config.pbtxt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["student_fp16"]


def test_deploy_from_the_registry_champion(mlflow_uri, tmp_path, monkeypatch, capsys):
    import mlflow

    from dakd_core.orchestration.tasks.register import DISTILLED_ROW
    from dakd_core.registry import RegisterConfig, promote, register
    from test_registry import _evaluation

    monkeypatch.setenv("DAKD_SYSTEM_METRICS", "0")
    record = _export(tmp_path, log_mlflow=True)
    registered = register(RegisterConfig(
        export=str(tmp_path / "export" / "export.json"), metrics=_evaluation(tmp_path, "eval", "a" * 64, 0.41),
        metrics_model=DISTILLED_ROW, source="gta5", target="cityscapes", git_commit="abc1234"))
    assert promote(NAME).decision == "promoted"
    capsys.readouterr()

    out = tmp_path / "triton"
    assert main(["deploy", "--model", f"{NAME}@champion", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"deployed models:/{NAME}@champion (version {registered.version}) -> {out / NAME}" in printed

    client = mlflow.MlflowClient()
    version = client.get_model_version(NAME, registered.version)
    model_dir = out / NAME
    assert sha256_hex((model_dir / "1" / "model.onnx").read_bytes()) == version.tags["artifact_sha256"]
    config, pb = parse_config(model_dir / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == (NAME, "onnxruntime_onnx", 8)
    assert [(t.name, list(t.dims)) for t in (*config.input, *config.output)] == [("image", [3, -1, -1]), ("logits", [19, -1, -1])]

    # logged with the run that logged the registered model (the export run), the version tagged
    run_id = record["mlflow"]["run_id"]
    assert version.tags["dakd.deploy.triton_uri"] == f"runs:/{run_id}/triton"
    logged = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/triton", dst_path=str(tmp_path / "dl")))
    for rel in ("config.pbtxt", "1/model.onnx"):
        assert (logged / NAME / rel).read_bytes() == (model_dir / rel).read_bytes(), rel

    # NAME/VERSION (and models:/ URIs) name a version too; --no-mlflow logs nothing
    client.delete_model_version_tag(NAME, registered.version, "dakd.deploy.triton_uri")
    assert main(["deploy", "--model", f"models:/{NAME}/{registered.version}", "--out", str(out),
                 "--name", "by-number", "--no-mlflow"]) == 0
    assert (out / "by-number" / "1" / "model.onnx").read_bytes() == (model_dir / "1" / "model.onnx").read_bytes()
    assert "dakd.deploy.triton_uri" not in client.get_model_version(NAME, registered.version).tags

    capsys.readouterr()
    assert main(["deploy", "--model", f"{NAME}@champion", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    for unknown in (f"{NAME}@nosuchalias", "dakd-nosuch-model@champion", f"{NAME}/99"):
        assert main(["deploy", "--model", unknown, "--out", str(tmp_path / "other")]) == 2
        assert "cannot resolve registry model" in capsys.readouterr().err, unknown
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())

    # a registry artifact whose bytes changed is refused (its sha256 tag), nothing written
    model_id = version.source.rsplit("/", 1)[-1]
    (stored,) = [p for p in (tmp_path / "mlartifacts").rglob("*.onnx") if model_id in p.parts]
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    assert main(["deploy", "--model", f"{NAME}@champion", "--out", str(tmp_path / "tampered")]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "tampered").exists() or not any((tmp_path / "tampered").iterdir())


def test_tensorrt_without_a_gpu_is_a_clear_error(exported_onnx, tmp_path, capsys):
    from dakd_core.deploy import tensorrt_unavailable

    if tensorrt_unavailable() is None:
        pytest.skip("CUDA and tensorrt are present: the engine build is checked by test_tensorrt_engine_builds")
    assert main(["deploy", "--model", exported_onnx, "--out", str(tmp_path / "repo"), "--tensorrt"]) == 2
    assert "--tensorrt needs a GPU with TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_tensorrt_engine_builds(exported_onnx, tmp_path):
    """On a GPU machine with tensorrt: a plan that Triton's config describes."""
    from dakd_core.deploy import tensorrt_unavailable

    if (reason := tensorrt_unavailable()) is not None:
        pytest.skip(f"TensorRT engine build needs a GPU with TensorRT: {reason}")
    result = deploy(DeployConfig(model=exported_onnx, out=str(tmp_path / "repo"), tensorrt=True,
                                 trt_min_hw=(32, 32), trt_opt_hw=(64, 64), trt_max_hw=(128, 128), max_batch_size=2))
    config, _ = parse_config(result.model_dir / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and (result.model_dir / "1" / "model.plan").stat().st_size > 0


# ------------------------------------------------------------------------ the graph and the config


def _graph(batch, elem_type: int, hw=("h", "w")) -> bytes:
    import onnx
    from onnx import helper

    shape = [batch, 3, *hw]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem_type, shape)], [helper.make_tensor_value_info("y", elem_type, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_types_and_dims_come_from_the_graph():
    import onnx

    inputs, outputs = graph_tensors(_graph("n", onnx.TensorProto.FLOAT16, hw=(64, "w")))
    assert [(t.name, t.data_type, t.dims) for t in (*inputs, *outputs)] == [
        ("x", "TYPE_FP16", (3, 64, -1)), ("y", "TYPE_FP16", (3, 64, -1))]
    with pytest.raises(DakdError, match=r"ONNX input 'x' has a fixed batch axis \(1\)"):
        graph_tensors(_graph(1, onnx.TensorProto.FLOAT))


def test_config_text_parses_against_tritons_schema():
    import onnx
    from google.protobuf import text_format

    inputs, outputs = graph_tensors(_graph("n", onnx.TensorProto.UINT8))
    text = model_config_text('odd "name"', "tensorrt_plan", 16, inputs, outputs, 2500)
    pb = triton_schema()
    config = text_format.Parse(text, pb.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ('odd "name"', "tensorrt_plan", 16)
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert [pb.DataType.Name(t.data_type) for t in (*config.input, *config.output)] == ["TYPE_UINT8", "TYPE_UINT8"]
    assert [list(t.dims) for t in (*config.input, *config.output)] == [[3, -1, -1], [3, -1, -1]]
    with pytest.raises(DakdError, match="control characters"):
        model_config_text("bad\nname", "onnxruntime_onnx", 1, inputs, outputs, 0)


@pytest.mark.parametrize("argv, message", [
    (["--model", "not a reference"], "field 'model': 'not a reference' is neither NAME@ALIAS"),
    (["--model", "m@champion", "--name", "../escape"], "field 'name': '../escape' is not a valid Triton model name"),
    (["--model", "m@champion", "--trt-min-hw", "2048", "256"], "trt_min_hw <= trt_opt_hw <= trt_max_hw must hold for the height"),
    (["--model", "m@champion", "--max-batch-size", "0"], "max_batch_size"),
])
def test_bad_arguments_are_errors_naming_the_field(argv, message, tmp_path, capsys):
    assert main(["deploy", "--out", str(tmp_path / "repo"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_out_must_be_a_local_directory(exported_onnx, capsys):
    assert main(["deploy", "--model", exported_onnx, "--out", "s3://bucket/triton"]) == 2
    assert "field 'out': 's3://bucket/triton' is not a local directory" in capsys.readouterr().err
