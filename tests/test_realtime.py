"""Real-time students under adverse weather (issue 9): the thesis losses as `dakd distill` options,
SwiftNet students through distillation, the weather evaluation path, throughput and the plot."""

from __future__ import annotations

import json

import pytest
import torch

from _distill_data import H, W, make_checkpoint, make_split
from dakd_core.cli import main as dakd
from dakd_core.config import build_config
from dakd_core.errors import ConfigError
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.train.distill import DistillConfig

# Each option of `dakd distill`, and the loss term it must add (or change).
OPTIONS = {
    "border_focal": (["--seg-loss", "border_focal"], "seg_main"),
    "border_kl": (["--lambda-border-kl", "0.5"], "t_border_kl"),
    "l2": (["--lambda-l2-feature", "1.0"], "t_l2_feat"),
    "cwd": (["--lambda-cwd", "1.0"], "t_cwd"),
    "lad": (["--lambda-lad", "1.0"], "t_lad"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    store = (tmp_path_factory.mktemp("rt") / "store")
    store.mkdir()
    uri = store.as_uri()
    return {
        "store": uri,
        "src": make_split(uri, "src", "source", 2, seed=1),
        "tgt": make_split(uri, "tgt", "target", 2, seed=2, labelled=False),
        "teacher": make_checkpoint(f"{uri}/teacher.pt", seed=0),
        "student": make_checkpoint(f"{uri}/student.pt", seed=1, model="swiftnet_resnet18"),
    }


def _distill(w, out, extra, capsys, model="swiftnet_resnet18", init=None, paradigm="b"):
    argv = ["distill", "--model", model, "--source-manifest", w["src"], "--target-manifest", w["tgt"],
            "--init", init or w["student"], "--teacher", w["teacher"], "--teacher-online",
            "--out", f"{w['store']}/runs/{out}", "--source-resize", str(H), str(W), "--target-resize", str(H),
            str(W), "--crop", str(H), str(W), "--iterations", "1", "--batch-size", "2", "--num-workers", "0",
            "--device", "cpu", "--paradigm", paradigm, "--lr", "1e-3", "--gate-max-images", "1", *extra]
    capsys.readouterr()
    assert dakd(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_each_loss_option_changes_the_distillation(world, mlflow_uri, capsys):
    base = _distill(world, "base", [], capsys)
    base_ckpt = load_checkpoint(base["last_checkpoint_uri"])
    assert "adapter" not in base_ckpt
    adapters = {}
    for name, (flags, term) in OPTIONS.items():
        res = _distill(world, name, flags, capsys)
        value = res["metrics"][f"train/{term}"]
        assert value > 0, name
        if name == "border_focal":  # replaces the CE: same batch, another value
            assert value != pytest.approx(base["metrics"]["train/seg_main"], rel=1e-3)
        else:
            assert f"train/{term}" not in base["metrics"]
        ckpt = load_checkpoint(res["last_checkpoint_uri"])
        # The term reached the gradients: one step from the same init ends at other weights.
        changed = [k for k, v in ckpt["model"].items() if v.is_floating_point()
                   and not torch.allclose(v, base_ckpt["model"][k], atol=1e-7)]
        assert changed, name
        if name in ("l2", "cwd", "lad"):
            # swiftnet_resnet18 'last' has 512 channels, deeplabv2_tiny's another count: adapter.
            weight = ckpt["adapter"]["proj.weight"]
            assert weight.shape[1] == 512 and weight.shape[2:] == (1, 1)
            adapters[name] = weight
    # Same seed, same initial adapter: different losses must have trained it differently.
    assert not torch.allclose(adapters["l2"], adapters["cwd"]) and not torch.allclose(adapters["l2"], adapters["lad"])
    # Rerunning a finished run resumes from last.pt, adapter included.
    again = _distill(world, "l2", OPTIONS["l2"][0], capsys)
    assert torch.equal(load_checkpoint(again["last_checkpoint_uri"])["adapter"]["proj.weight"], adapters["l2"])


def test_mobilenetv4_student_with_all_losses(world, mlflow_uri, capsys):
    init = make_checkpoint(f"{world['store']}/mnv4.pt", seed=3, model="swiftnet_mobilenetv4")
    flags = ["--seg-loss", "border_focal", "--lambda-border-kl", "0.5", "--lambda-cwd", "0.5",
             "--feature-level", "mid", "--temperature", "2"]
    res = _distill(world, "mnv4", flags, capsys, model="swiftnet_mobilenetv4", init=init, paradigm="c")
    ckpt = load_checkpoint(res["last_checkpoint_uri"])
    assert ckpt["model_name"] == "swiftnet_mobilenetv4" and ckpt["config"]["lambda_cwd"] == 0.5
    assert all(res["metrics"][f"train/{k}"] > 0 for k in ("s_cwd", "t_cwd", "s_border_kl", "t_border_kl"))


def test_bad_loss_options_name_their_field(world, mlflow_uri, capsys):
    base = dict(model="swiftnet_resnet18", source_manifest=world["src"], target_manifest=world["tgt"],
                init=world["student"], teacher=world["teacher"], out=f"{world['store']}/runs/bad")
    with pytest.raises(ConfigError, match="lambda_cwd"):
        build_config(DistillConfig, None, **base, teacher_cache="x/index.parquet", lambda_cwd=1.0)
    with pytest.raises(ConfigError, match="seg_loss"):
        build_config(DistillConfig, None, **base, teacher_online=True, seg_loss="dice")
    capsys.readouterr()
    argv = ["distill", "--model", "swiftnet_resnet18", "--source-manifest", world["src"], "--target-manifest",
            world["tgt"], "--init", world["student"], "--teacher", world["teacher"], "--teacher-online",
            "--out", f"{world['store']}/runs/badlevel", "--lambda-lad", "1", "--feature-level", "decoder",
            "--device", "cpu", "--iterations", "1", "--num-workers", "0"]
    assert dakd(argv) == 2
    assert "feature_level 'decoder' is not a feature map of the teacher" in capsys.readouterr().err


def test_weather_target_gives_per_condition_and_calibration_report(tmp_path, capsys):
    """synth --weather -> ingest --format acdc -> evaluate: per-condition table + reliability plot."""
    root, store = tmp_path / "acdc", (tmp_path / "store")
    assert dakd(["synth", "--out", str(root), "--domain", "target", "--n", "1", "--size", "64x32",
                 "--split", "val", "--weather"]) == 0
    assert dakd(["ingest", "--format", "acdc", "--root", str(root), "--split", "val", "--domain", "target",
                 "--store", store.as_uri(), "--name", "acdc"]) == 0
    student = make_checkpoint(f"{store.as_uri()}/student.pt", seed=1, model="deeplabv2_tiny")
    out = tmp_path / "eval"
    assert dakd(["evaluate", "--model", f"student={student}", "--manifest",
                 f"{store.as_uri()}/datasets/acdc/val/manifest.parquet", "--out", str(out),
                 "--device", "cpu", "--no-mlflow"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())["models"]["student"]
    assert sorted(metrics["per_condition"]) == ["fog", "night", "rain", "snow"]
    assert 0 <= metrics["ece"] <= 1 and len(metrics["reliability"]["count"]) == 15
    assert len(metrics["per_class_auprc"]) == 19
    report = (out / "report.md").read_text()
    assert "## mIoU per condition" in report and "| student |" in report.split("## mIoU per condition")[1]
    assert (out / "plots" / "reliability.png").stat().st_size > 1000


def test_throughput_rows_and_latency_vs_miou_plot(tmp_path):
    from dakd_core.errors import DataError
    from dakd_core.evaluation import realtime

    cpu = torch.device("cpu")
    rts = realtime.runtimes_for(cpu)
    assert [(r.name, r.precision) for r in rts] == [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")]
    rows = realtime.measure(["deeplabv2_tiny"], [(32, 64), (48, 64)], cpu, {(32, 64): 2, (48, 64): 1}, warmup=1)
    assert len(rows) == 6 and {r["resolution"] for r in rows} == {"32x64", "48x64"}
    assert all(r["latency_ms"] > 0 and r["fps"] == pytest.approx(1000 / r["latency_ms"], rel=0.01) for r in rows)
    # ONNX FP16 predictions agree with eager FP32 (the timed module is the deployed one).
    from dakd_core.models import create_model

    torch.manual_seed(0)
    model = create_model("deeplabv2_tiny").eval()
    x = torch.rand(1, 3, 32, 64) * 255
    eager = realtime.build_predictor(model, rts[0], cpu)(x)
    half = realtime.build_predictor(model, rts[2], cpu)(x)
    assert eager.shape == (1, 19, 32, 64) and (eager.argmax(1) == half.argmax(1)).float().mean() > 0.95

    (tmp_path / "eval.json").write_text(json.dumps({"models": {"a": {"miou": 0.42}, "b": {"miou": 0.3}}}))
    (tmp_path / "score.json").write_text(json.dumps({"miou": 0.25}))
    assert realtime.read_miou(str(tmp_path / "eval.json"), "a") == 0.42
    assert realtime.read_miou(str(tmp_path / "score.json")) == 0.25
    with pytest.raises(DataError, match="eval.json has no model 'c'"):
        realtime.read_miou(str(tmp_path / "eval.json"), "c")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        realtime.read_miou(str(tmp_path / "bad.json"))

    best = realtime.fastest(rows, "deeplabv2_tiny", "32x64")
    assert best["latency_ms"] == min(r["latency_ms"] for r in rows if r["resolution"] == "32x64")
    points = [{"model": "deeplabv2_tiny", "role": "student", "miou": 0.42, "latency_ms": best["latency_ms"],
               "runtime": best["runtime"]}, {"model": "teacher", "role": "teacher", "miou": 0.5,
                                             "latency_ms": 10 * best["latency_ms"], "runtime": "torch"}]
    doc = realtime.publish(str(tmp_path / "out"), rows, points, "32x64")
    assert (tmp_path / "out" / "latency_vs_miou.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "out" / "realtime.json").read_text())
    assert saved["rows"] == rows and saved["files"] == doc["files"]
    assert "| deeplabv2_tiny |" in (tmp_path / "out" / "realtime.md").read_text()


def test_dakd_bench_realtime_cli(tmp_path, capsys):
    (tmp_path / "m.json").write_text(json.dumps({"miou": 0.4}))
    capsys.readouterr()
    assert dakd(["bench", "realtime", "--out", str(tmp_path / "x"), "--students", "deeplabv2_tiny",
                 "--miou", f"nope={tmp_path / 'm.json'}"]) == 2
    assert "--miou 'nope=" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert dakd(["bench", "realtime", "--out", str(tmp_path / "rt"), "--students", "deeplabv2_tiny",
                 "--teachers", "deeplabv2_tiny", "--train-resolution", "32x64", "--full-resolution", "64x64",
                 "--iters", "1", "--full-iters", "1", "--warmup", "0", "--device", "cpu",
                 "--miou", f"deeplabv2_tiny={tmp_path / 'm.json'}"]) == 0
    doc = json.loads((tmp_path / "rt" / "realtime.json").read_text())
    # student: 3 CPU runtimes x 2 resolutions; teacher: eager FP32 at the training resolution
    assert len(doc["rows"]) == 7 and doc["points"][0]["miou"] == 0.4
    assert (tmp_path / "rt" / "latency_vs_miou.png").exists()
