"""benchmarks/gpu_suite.py: its dry run on CPU (every section's code path), the budget, the table
on given numbers, and the GPU utilisation sampler."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time

import pytest

from dakd_core.bench.gpu import UtilisationSampler, nvml_reader
from dakd_core.bench.perf import load_benchmark


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("gpu_suite")


def test_dry_run_measures_every_section_on_cpu(suite, tmp_path, mlflow_uri, monkeypatch):
    out = tmp_path / "suite.json"
    scratch = tmp_path / "scratch"  # the sections' temporary directories
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report = suite.main(["--dry-run", "--json", str(out)])
    # every section removed its data, caches and checkpoints (one distillation run left 0.6-1.8 GB);
    # torch's compiled-kernel cache stays, by design (reused by the next run)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(report["rows"], default=str))
    assert report["results"]["skipped"] == {} and set(report["seconds"]) == {"train", "loader", "distill", "export", "ort"}
    rows = {r["measure"]: r for r in report["rows"]}
    measured = [
        "deeplabv2_tiny: dakd pretrain step / bare PyTorch loop (throughput)",
        "training stream, 1->2 workers: speed-up",
        "training stream, 2 workers / deeplabv2_tiny bare step consumption",
        "step from the cache / student alone (deeplabv2_tiny -> deeplabv2_tiny)",
        "step with the live teacher / from the cache (deeplabv2_tiny -> deeplabv2_tiny)",
        "student_onnx_fp16 / student_onnx_fp32 throughput",
        "ONNX Runtime CPUExecutionProvider: FP16 / FP32 throughput",
    ]
    for name in measured:
        assert math.isfinite(rows[name]["value"]) and rows[name]["value"] > 0, name
    # the loader row divides the 2-worker rate by the bare loop's images/s
    train = report["results"]["train"]["rows"][0]
    loader = report["results"]["loader"]["rates"][2]
    assert rows[measured[2]]["value"] == pytest.approx(loader / train["bare_img_s"])
    assert rows[measured[2]]["goal"] == ">= 1.0"
    # no GPU here: utilisation is not sampled, and says so instead of reading 0 %
    for kind in ("alone", "cached", "live"):
        row = rows[f"GPU utilisation, {kind} steps"]
        assert math.isnan(row["value"]) and row["detail"] == "not sampled: CPU run"
    assert report["results"]["distill"]["clock"] == "cpu"


def test_budget_skips_sections_instead_of_overrunning(suite, capsys):
    report = suite.main(["--dry-run", "--budget-s", "0"])
    assert report["seconds"] == {}
    assert set(report["results"]["skipped"]) == {"train", "loader", "distill", "export", "ort"}
    assert "| train | skipped | n/a | – | (no goal) | budget: 0 s of 0 s spent |" in capsys.readouterr().out


def test_gpu_run_without_cuda_is_a_usage_error(suite, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as e:
        suite.main([])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_table_on_given_numbers(suite):
    train = {"device": "cuda", "rows": [
        {"model": "T", "bare_img_s": 10.0, "dakd_img_s": 9.5, "dakd_over_bare": 0.95},
        {"model": "S", "bare_img_s": 40.0, "dakd_img_s": 30.0, "dakd_over_bare": 0.75}]}
    loader = {"rates": {1: 12.0, 8: 60.0}, "cores": 16}
    sampler = UtilisationSampler(None, unavailable="nvidia-ml-py is not installed")
    rows = {r.measure: r for r in suite.suite_rows(
        {"skipped": {}, "train": train, "loader": loader, "ort": {"CUDAExecutionProvider": {"fp16": 90.0, "fp32": 50.0}}},
        sampler, "cuda")}
    assert rows["T: dakd pretrain AMP step / bare AMP loop (throughput)"].status == "met"
    assert rows["S: dakd pretrain AMP step / bare AMP loop (throughput)"].status == "NOT met"
    # the GPU's appetite is the hungrier network's bare loop: 60 img/s from 8 workers vs 40 -> 1.5
    feed = rows["training stream, 8 workers / S bare step consumption"]
    assert feed.value == pytest.approx(1.5) and feed.status == "met"
    assert rows["training stream, 1->8 workers: speed-up"].value == pytest.approx(5.0)
    cuda = rows["ONNX Runtime CUDAExecutionProvider: FP16 / FP32 throughput"]
    assert cuda.value == pytest.approx(1.8) and cuda.goal == ">= 1.5" and cuda.status == "met"
    none = suite.suite_rows({"skipped": {}, "ort": {}}, sampler, "cuda")
    assert none[0].detail == "none present (pip install onnxruntime-gpu for CUDA / TensorRT)"


def test_sampler_averages_the_readings_taken_inside_each_probe():
    level = {"now": 20.0}
    sampler = UtilisationSampler(lambda: level["now"], period=0.01)
    with sampler.probe("cached"):
        time.sleep(0.1)
    level["now"] = 80.0
    with sampler.probe("live"):
        time.sleep(0.1)
    time.sleep(0.05)  # nothing is read between probes
    assert sampler.mean("cached") == 20.0 and sampler.mean("live") == 80.0
    assert len(sampler.samples["cached"]) >= 2 and set(sampler.samples) == {"cached", "live"}
    blind = UtilisationSampler(None, unavailable="why")
    with blind.probe("cached"):
        pass
    assert blind.mean("cached") is None and blind.mean("never") is None


def test_nvml_reader_without_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as when the package is absent
    assert nvml_reader() == (None, "nvidia-ml-py is not installed")
