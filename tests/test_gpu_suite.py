"""benchmarks/gpu_suite.py: its dry run on CPU (every section's code path, the report rewritten
around every section), a failing, overrunning, interrupted or killed section losing nothing of the
others, the budget, the ONNX Runtime provider check, the table on given numbers, and the GPU
utilisation sampler."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dakd_core.bench.gpu import UtilisationSampler, nvml_reader
from dakd_core.bench.perf import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
ALL_SECTIONS = ["export_b1", "train", "distill", "ort", "loader"]
TRAIN = {"device": "cpu", "rows": [{"model": "m", "bare_img_s": 4.0, "dakd_img_s": 3.0, "dakd_over_bare": 0.75}]}
LOADER = {"rates": {1: 10.0, 2: 18.0}, "cores": 2}


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("gpu_suite")


def _statuses(path: Path) -> dict:
    return {k: v["status"] for k, v in json.loads(path.read_text())["sections"].items()}


def test_dry_run_measures_every_section_and_rewrites_the_report_around_each(suite, tmp_path, monkeypatch):
    # the lent GPU machines have no MLflow: the suite's stages run with log_mlflow off and never import it
    monkeypatch.setitem(sys.modules, "mlflow", None)
    out = tmp_path / "suite.json"
    scratch = tmp_path / "scratch"  # the sections' temporary directories
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    real, seen = suite.sections, []

    def spied(preset):  # each section first reads the JSON as a kill at that moment would leave it
        def spy(name, fn):
            return lambda p, s: (seen.append((name, _statuses(out))), fn(p, s))[1]
        return [(name, spy(name, fn)) for name, fn in real(preset)]

    monkeypatch.setattr(suite, "sections", spied)
    # a budget no loaded CPU reaches: the 420 s default would skip the last sections at load 10
    report = suite.main(["--dry-run", "--budget-s", "3000", "--json", str(out)])
    assert [name for name, _ in seen] == ALL_SECTIONS
    for i, (name, statuses) in enumerate(seen):  # the finished ones are in, the running one is named
        assert statuses == {**dict.fromkeys(ALL_SECTIONS[:i], "ok"), name: "running"}
    # every section removed its data, caches and checkpoints (one distillation run left 0.6-1.8 GB);
    # torch's compiled-kernel cache stays, by design (reused by the next run)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(report["rows"], default=str))
    assert "| distill | step from the cache / student alone" in out.with_suffix(".md").read_text()
    assert report["results"]["skipped"] == {} and report["results"]["errors"] == {}
    assert set(report["seconds"]) == set(ALL_SECTIONS)
    rows = {r["measure"]: r for r in report["rows"]}
    measured = [
        "deeplabv2_tiny: dakd pretrain step / bare PyTorch loop (throughput)",
        "training stream, 1->2 workers: speed-up",
        "training stream, 2 workers / deeplabv2_tiny bare step consumption",
        "step from the cache / student alone (deeplabv2_tiny -> deeplabv2_tiny)",
        "step with the live teacher / from the cache (deeplabv2_tiny -> deeplabv2_tiny)",
        "student_onnx_fp16 / student_onnx_fp32 throughput, batch 1",
        "ONNX Runtime CPUExecutionProvider: FP16 / FP32 throughput",
    ]
    for name in measured:
        assert math.isfinite(rows[name]["value"]) and rows[name]["value"] > 0, name
    assert report["results"]["export_b1"]["onnx_provider"] == "CPUExecutionProvider"
    # the train figures are over the same timed steps on both sides: 2 iterations, no warm-up -> 1 gap
    assert report["results"]["train"]["timed_steps"] == 1
    assert rows[measured[0]]["detail"].endswith("cpu; dakd without MLflow (log_mlflow off)")
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


def _fake(monkeypatch, suite, runs):
    monkeypatch.setattr(suite, "sections", lambda preset: runs)


def test_a_failing_or_overrunning_section_is_a_row_and_the_others_keep_theirs(suite, tmp_path, monkeypatch):
    def broken(p, s):
        raise RuntimeError("CUDA out of memory")

    def slow(p, s):
        time.sleep(3600)  # not stopped at its bound: pytest's 600 s timeout fails the test

    _fake(monkeypatch, suite, [("train", lambda p, s: TRAIN), ("distill", broken), ("ort", slow),
                               ("loader", lambda p, s: LOADER)])
    monkeypatch.setitem(suite.PRESETS, "dry", dataclasses.replace(suite.PRESETS["dry"], bounds={"ort": 0.5}))
    out = tmp_path / "s.json"
    report = suite.main(["--dry-run", "--json", str(out)])
    assert _statuses(out) == {"train": "ok", "distill": "error", "ort": "error", "loader": "ok"}
    rows = {(r["stage"], r["measure"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("distill", "error")]["detail"] == "RuntimeError: CUDA out of memory"
    assert rows[("ort", "error")]["detail"] == "SectionTimeout: stopped at its time bound of 0.5 s"
    assert rows[("train", "m: dakd pretrain step / bare PyTorch loop (throughput)")]["value"] == 0.75
    assert rows[("loader", "training stream, 2 workers / m bare step consumption")]["value"] == pytest.approx(18 / 4)
    assert json.dumps(report["rows"]) == json.dumps(json.loads(out.read_text())["rows"])  # NaN != NaN


def test_an_interrupted_run_keeps_the_finished_sections(suite, tmp_path, monkeypatch):
    def interrupted(p, s):
        raise KeyboardInterrupt

    never = []
    _fake(monkeypatch, suite, [("train", lambda p, s: TRAIN), ("loader", interrupted),
                               ("distill", lambda p, s: never.append(1))])
    out = tmp_path / "s.json"
    with pytest.raises(KeyboardInterrupt):
        suite.main(["--dry-run", "--json", str(out)])
    assert _statuses(out) == {"train": "ok", "loader": "interrupted"} and never == []
    assert json.loads(out.read_text())["results"]["train"] == TRAIN
    assert "| train | m: dakd pretrain step / bare PyTorch loop (throughput) | 0.75x |" in out.with_suffix(".md").read_text()


def test_a_killed_run_leaves_the_finished_sections_and_names_the_running_one(tmp_path):
    out = tmp_path / "s.json"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from dakd_core.bench.perf import load_benchmark
        suite = load_benchmark("gpu_suite")
        suite.sections = lambda p: [("train", lambda p, s: {TRAIN!r}), ("loader", lambda p, s: os._exit(9)),
                                    ("distill", lambda p, s: {{}})]
        suite.main(["--dry-run", "--json", sys.argv[1]])
    """)
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    assert _statuses(out) == {"train": "ok", "loader": "running"}
    report = json.loads(out.read_text())
    assert [r["value"] for r in report["rows"] if r["stage"] == "train"] == [0.75]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.md"]  # no temporary file left beside


def test_budget_skips_sections_instead_of_overrunning(suite, capsys, tmp_path):
    report = suite.main(["--dry-run", "--budget-s", "0", "--json", str(tmp_path / "s.json")])
    assert report["seconds"] == {}
    assert set(report["results"]["skipped"]) == set(ALL_SECTIONS)
    assert "| train | skipped | n/a | – | (no goal) | budget: 0 s of 0 s spent |" in capsys.readouterr().out


def test_a_cuda_provider_that_falls_back_to_the_cpu_is_an_error_not_a_cuda_figure(suite, monkeypatch):
    import onnxruntime as ort

    # ONNX Runtime lists CUDA, then cannot load it (CPU wheel, no libcudnn): the session runs on the CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cuda = dataclasses.replace(suite.PRESETS["dry"], device="cuda")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        result = suite.ort_section(cuda, None)
    assert result == {"CUDAExecutionProvider": {"error": (
        "ProviderFallback: asked for CUDAExecutionProvider, ONNX Runtime runs the session on CPUExecutionProvider "
        "(its providers: ['CPUExecutionProvider'])")}}
    (row,) = suite.suite_rows({"ort": result}, UtilisationSampler(None), "cuda")
    assert math.isnan(row.value) and row.detail.startswith("ProviderFallback") and row.status == "(no goal)"


def test_gpu_run_without_cuda_is_a_usage_error(suite, capsys):
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
    export = {"device": "cuda (H)", "resolution": [512, 1024], "batch_size": 8,
              "throughput_img_s": {"student_pt2_fp16": 50.0, "student_eager_fp32": 20.0},
              "ratios": {"student_pt2_fp16 / student_eager_fp32": 2.5}, "evaluation_mpx_s": 9.0,
              "settings": {"channels_last": True, "cudnn_conv_tf32": True}}
    sampler = UtilisationSampler(None, unavailable="nvidia-ml-py is not installed")
    rows = {r.measure: r for r in suite.suite_rows(
        {"skipped": {}, "train": train, "loader": loader, "export_b8": export,
         "ort": {"CUDAExecutionProvider": {"fp16": 90.0, "fp32": 50.0}}}, sampler, "cuda")}
    assert rows["T: dakd pretrain AMP step / bare AMP loop (throughput)"].status == "met"
    assert rows["S: dakd pretrain AMP step / bare AMP loop (throughput)"].status == "NOT met"
    # the GPU's appetite is the hungrier network's bare loop: 60 img/s from 8 workers vs 40 -> 1.5
    feed = rows["training stream, 8 workers / S bare step consumption"]
    assert feed.value == pytest.approx(1.5) and feed.status == "met"
    assert rows["training stream, 1->8 workers: speed-up"].value == pytest.approx(5.0)
    cuda = rows["ONNX Runtime CUDAExecutionProvider: FP16 / FP32 throughput"]
    assert cuda.value == pytest.approx(1.8) and cuda.goal == ">= 1.5" and cuda.status == "met"
    pt2 = rows["student_pt2_fp16 / student_eager_fp32 throughput, batch 8"]
    assert pt2.value == 2.5 and pt2.status == "met"
    assert pt2.detail == "50.00 vs 20.00 img/s; channels_last True, cudnn_conv_tf32 True"
    none = suite.suite_rows({"skipped": {}, "ort": {}}, sampler, "cuda")
    assert none[0].detail == "none present (the CUDA image has onnxruntime-gpu; pip install onnxruntime-gpu)"


def test_utilisation_is_reported_over_a_5_s_window_only(suite):
    distill = {"teacher": "T", "student": "S", "cached_over_alone": 1.0, "live_over_cached": 2.0,
               "step_seconds_cached": 0.1, "step_seconds_alone": 0.1, "step_seconds_live": 0.2,
               "cache_uint8_bytes_per_image_vs_fp32_maps": 0.2, "cache_fp16_bytes_per_image_vs_fp32_maps": 0.5}
    now = {"t": 0.0}
    sampler = UtilisationSampler(lambda: 90.0, period=0.01, clock=lambda: now["t"])
    for kind, seconds in (("cached", 6.0), ("live", 4.0)):
        with sampler.probe(kind):
            time.sleep(0.03)
            now["t"] += seconds
    rows = {r.measure: r for r in suite.suite_rows({"distill": distill}, sampler, "cuda")}
    cached, live = rows["GPU utilisation, cached steps"], rows["GPU utilisation, live steps"]
    assert cached.value == 90.0 and cached.goal == ">= 85" and cached.status == "met"
    assert cached.detail.endswith("NVML samples over 6.0 s")
    assert math.isnan(live.value) and "over 4.0 s, under the 5 s window" in live.detail


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
    assert 0.1 <= sampler.window("cached") < 5.0
    blind = UtilisationSampler(None, unavailable="why")
    with blind.probe("cached"):
        pass
    assert blind.mean("cached") is None and blind.mean("never") is None and blind.window("cached") == 0.0


def test_nvml_reader_without_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as when the package is absent
    assert nvml_reader() == (None, "nvidia-ml-py is not installed")


def test_gpu_run_sh_writes_everything_under_out_with_dakd_core_from_its_checkout(tmp_path):
    # no PYTHONPATH: `python benchmarks/gpu_suite.py` must find this checkout's dakd_core by itself
    # KIT: a kit built in this checkout (.whl/) holds cp312 wheels for the lent machine, not for this Python
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OUT": str(tmp_path / "out"),
                                                                           "PYTHON": sys.executable,
                                                                           "KIT": str(tmp_path / "no-kit")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--dry-run", "--budget-s", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["environment.txt", "gpu_suite.json", "gpu_suite.log", "gpu_suite.md"]
    assert f"torch {torch.__version__}" in (out / "environment.txt").read_text()
    assert _statuses(out / "gpu_suite.json") == dict.fromkeys(ALL_SECTIONS, "skipped")
    lines = (out / "gpu_suite.log").read_text().splitlines()  # the paths first
    assert lines[:3] == [f"gpu suite: JSON {out / 'gpu_suite.json'}", f"gpu suite: Markdown {out / 'gpu_suite.md'}",
                         f"gpu suite: dakd_core from {ROOT / 'dakd_core'}, torch {lines[2].rsplit(' ', 1)[-1]}"]


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    """A minimal pure-Python wheel: one module and its metadata."""
    import zipfile

    path = folder / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/__init__.py": "",
             f"{name}-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = f"{name}-1.0.dist-info/RECORD"
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
        z.writestr(record, "".join(f"{arc},,\n" for arc in [*files, record]))
    return path


def test_gpu_run_sh_says_which_requirements_of_the_kit_the_machine_does_not_meet(tmp_path):
    # the kit installs --no-deps: a requirement the machine lacks (or has at a refused version) is
    # written to environment.txt; `typing` (cityscapesscripts' backport) is the standard library's
    kit = tmp_path / "kit"
    kit.mkdir()
    _wheel(kit, "dakdkitprobe", ["dakd-absent-dist>=1", "typing", "numpy>=1"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OUT": str(tmp_path / "out"),
                                                                           "PYTHON": sys.executable, "KIT": str(kit),
                                                                           "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--dry-run", "--budget-s", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tmp_path / "out" / "environment.txt").read_text().splitlines()
    kit_lines = lines[next(i for i, line in enumerate(lines) if line.startswith("kit: ")):]
    assert kit_lines == ["kit: 1 distributions, 1 unmet requirements",
                         "dakdkitprobe 1.0 requires dakd-absent-dist, which is not installed."]
