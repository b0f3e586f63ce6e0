"""`dakd score` against the official Cityscapes script; `dakd evaluate` end to end on a manifest."""

from __future__ import annotations

import hashlib
import json
import math
import sys

import numpy as np
import pytest
import torch

from dakd_core.data.imageio import encode_png
from dakd_core.errors import DakdError, DataError
from dakd_core.labels import CLASS_NAMES

H, W = 32, 64
CITY = "frankfurt"


def _cityscapes_tree(tmp_path, n=4, seed=0):
    """Tiny Cityscapes val tree (labelIds GT) and train-id prediction PNGs.

    GT draws from every labelId (ignored ones included) except those of 'train' and 'motorcycle';
    predictions never say 'motorcycle' (absent from both -> excluded from the mean) but do say
    'train' (IoU 0), and some predictions are 255 (misses, like the official 'unlabeled')."""
    from cityscapesscripts.helpers.labels import labels as cs_labels

    rng = np.random.default_rng(seed)
    gt_ids = [lb.id for lb in cs_labels if 0 <= lb.id < 34 and lb.name not in ("train", "motorcycle")]
    train_of = {lb.id: lb.trainId for lb in cs_labels if 0 <= lb.id < 34}
    pred_ids = [t for t in range(19) if CLASS_NAMES[t] != "motorcycle"] + [255]
    root, pred_dir = tmp_path / "cityscapes", tmp_path / "pred"
    ids = []
    for i in range(n):
        sid = f"{CITY}_{i:06d}_000019"
        ids.append(sid)
        img_dir = root / "leftImg8bit" / "val" / CITY
        gt_dir = root / "gtFine" / "val" / CITY
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        pred_dir.mkdir(exist_ok=True)
        (img_dir / f"{sid}_leftImg8bit.png").write_bytes(encode_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
        gt = rng.choice(gt_ids, (H, W)).astype(np.uint8)
        (gt_dir / f"{sid}_gtFine_labelIds.png").write_bytes(encode_png(gt))
        # predictions right on ~half the pixels, random elsewhere
        truth = np.vectorize(train_of.get)(gt).astype(np.uint8)
        pred = rng.choice(pred_ids, (H, W)).astype(np.uint8)
        keep = (rng.random((H, W)) < 0.5) & (truth != 255)
        pred[keep] = truth[keep]
        (pred_dir / f"{sid}.png").write_bytes(encode_png(pred))
    return root, pred_dir, ids


def _official(root, pred_dir, ids, tmp_path) -> dict:
    """cityscapesscripts 2.3.0 evaluateImgLists on labelId versions of the predictions."""
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import labels as cs_labels

    from dakd_core.data.imageio import decode_label

    if not hasattr(np, "in1d"):  # numpy 2 removed it; the script still calls it
        np.in1d = np.isin
    to_label_id = np.zeros(256, np.uint8)  # 255 (and anything unmapped) -> 0 'unlabeled'
    for lb in cs_labels:
        if 0 <= lb.trainId < 19 and lb.id >= 0:
            to_label_id[lb.trainId] = lb.id
    official_dir = tmp_path / "official_pred"
    official_dir.mkdir()
    preds, gts = [], []
    for sid in ids:
        train = decode_label((pred_dir / f"{sid}.png").read_bytes(), sid)
        path = official_dir / f"{sid}.png"
        path.write_bytes(encode_png(to_label_id[train]))
        preds.append(str(path))
        gts.append(str(root / "gtFine" / "val" / CITY / f"{sid}_gtFine_labelIds.png"))
    args = ev.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    try:
        return ev.evaluateImgLists(preds, gts, args)
    except SystemExit as e:  # the script reports its errors with sys.exit
        pytest.fail(f"official evaluation exited: {e}")


def test_score_matches_official_cityscapes_script(tmp_path):
    from dakd_core.evaluation.score import ScoreConfig, run

    root, pred_dir, ids = _cityscapes_tree(tmp_path)
    result = run(ScoreConfig(pred=str(pred_dir), gt=str(root), gt_format="cityscapes", out=str(tmp_path / "out")))
    ours = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert ours == json.loads(json.dumps(result.metrics))
    official = _official(root, pred_dir, ids, tmp_path)
    for name in CLASS_NAMES:
        theirs = official["classScores"][name]
        if math.isnan(theirs):
            assert ours["per_class_iou"][name] is None, name
        else:
            assert ours["per_class_iou"][name] == pytest.approx(theirs, abs=1e-6), name
    assert ours["per_class_iou"]["motorcycle"] is None and ours["per_class_iou"]["train"] == 0.0
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        assert 0 <= ours[key] <= 1
    assert ours["num_samples"] == len(ids)


def test_score_refuses_missing_or_misshaped_predictions(tmp_path):
    from dakd_core.evaluation.score import ScoreConfig, run

    root, pred_dir, ids = _cityscapes_tree(tmp_path, n=2)
    cfg = ScoreConfig(pred=str(pred_dir), gt=str(root), gt_format="cityscapes", out=str(tmp_path / "out"))
    (pred_dir / f"{ids[1]}.png").write_bytes(encode_png(np.zeros((H, W + 1), np.uint8)))
    with pytest.raises(DataError, match=ids[1]):
        run(cfg)
    (pred_dir / f"{ids[1]}.png").unlink()
    with pytest.raises(DataError, match=f"missing prediction.*{ids[1]}"):
        run(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()


# ---------------------------------------------------------------- evaluate


def _manifest(tmp_path, n=3, conditions=("fog", "night", "fog")) -> str:
    from dakd_core.data.manifest import write_manifest
    from dakd_core.storage import open_store

    rng = np.random.default_rng(3)
    store = open_store(str(tmp_path / "store"))
    rows = []
    for i in range(n):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        label = rng.integers(0, 19, (H, W)).astype(np.uint8)
        label[:4] = 255
        img_bytes = encode_png(image)
        rows.append(
            {
                "sample_id": f"s{i}",
                "split": "val",
                "domain": "acdc",
                "condition": conditions[i],
                "image_uri": store.put_bytes(f"img/s{i}.png", img_bytes),
                "label_uri": store.put_bytes(f"lbl/s{i}.png", encode_png(label)),
                "height": H,
                "width": W,
                "sha256": hashlib.sha256(img_bytes).hexdigest(),
                "class_pixels": np.bincount(label[label < 19], minlength=19).tolist(),
            }
        )
    return write_manifest(store, "datasets/acdc/val/manifest.parquet", rows)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A checkpoint and its ONNX export (no MLflow)."""
    from dakd_core.export import ExportConfig
    from dakd_core.export import run as export
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload, save_checkpoint

    torch.manual_seed(1)
    tmp = tmp_path_factory.mktemp("student")
    ckpt = save_checkpoint(str(tmp / "student.pt"), make_payload(create_model("deeplabv2_tiny")))
    cfg = ExportConfig(
        model=ckpt, out=str(tmp / "export"), val_manifest=_manifest(tmp), resolution=(H, W), warmup=0, iters=1,
        log_mlflow=False,
    )
    export(cfg)
    return ckpt, tmp / "export"


def test_export_parity_on_a_manifest_is_recorded(student):
    record = json.loads((student[1] / "export.json").read_text())
    parity = record["parity"]
    assert parity["samples"] == 3 and parity["miou_delta_points"] <= 0.1
    assert 0 <= parity["max_prob_diff"] < 1e-2 and parity["argmax_agreement"] > 0.99
    assert parity["miou_fp32"] == pytest.approx(parity["miou_fp16"], abs=1e-3)


def test_export_fails_when_fp16_loses_miou_and_publishes_nothing(tmp_path, student, monkeypatch):
    """An FP16 graph that computes something else (here: another network's FP32 graph) must trip
    the mIoU-delta gate before anything is written."""
    from dakd_core import export as export_mod
    from dakd_core.evaluation.inference import DeployedSegmenter
    from dakd_core.models import create_model

    torch.manual_seed(7)
    other = export_mod.export_onnx(DeployedSegmenter(create_model("deeplabv2_tiny")).eval())
    monkeypatch.setattr(export_mod, "onnx_to_fp16", lambda _: other)
    out = tmp_path / "export"
    cfg = export_mod.ExportConfig(
        model=student[0], out=str(out), val_manifest=_manifest(tmp_path), resolution=(H, W), max_miou_delta=0.1,
        log_mlflow=False,
    )
    with pytest.raises(DakdError, match="changes mIoU by"):
        export_mod.run(cfg)
    assert not out.exists() or not any(out.rglob("*"))


def test_evaluate_two_models_one_table_with_conditions_and_plots(tmp_path, student, mlflow_uri):
    import mlflow

    from dakd_core.evaluation.evaluate import EvalConfig, run

    ckpt, export_dir = student
    manifest = _manifest(tmp_path)
    out = tmp_path / "eval"
    cfg = EvalConfig(
        models=[f"eager={ckpt}", f"onnx={export_dir / 'student_fp32.onnx'}"],
        manifest=manifest, out=str(out), grid_samples=2,
    )
    result = run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["manifest_sha256"] == hashlib.sha256(open(manifest.removeprefix("file://"), "rb").read()).hexdigest()
    eager, onnx_m = metrics["models"]["eager"], metrics["models"]["onnx"]
    # the same network through both paths: same predictions, so the same confusion-derived numbers
    assert eager["miou"] == pytest.approx(onnx_m["miou"], abs=1e-9)
    assert eager["per_class_iou"] == pytest.approx(onnx_m["per_class_iou"])
    assert eager["ece"] == pytest.approx(onnx_m["ece"], abs=1e-4)
    assert set(eager["per_condition"]) == {"fog", "night"}
    assert eager["kind"] == "torch" and onnx_m["kind"] == "onnx"
    for key in ("miou", "miou_16", "miou_13", "pixel_accuracy", "mean_class_accuracy", "ece", "mean_auprc"):
        assert 0 <= eager[key] <= 1, key
    assert len(eager["per_class_auprc"]) == 19 and sum(eager["reliability"]["count"]) == 3 * (H - 4) * W
    report = (out / "report.md").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| eager") or line.startswith("| onnx")]
    assert len(table_rows) >= 2 and len(table_rows[0].split("|")) == 1 + 1 + 1 + 19 + 1 + 1  # name, mIoU, 19, acc
    assert f"{100 * eager['miou']:.1f}" in table_rows[0] and "fog" in report
    for png in ("per_class_iou.png", "confusion_eager.png", "samples_onnx.png", "reliability.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    run_ = mlflow.search_runs(filter_string="tags.`dakd.stage` = 'evaluate'", output_format="list", search_all_experiments=True)[0]
    assert run_.data.metrics["eager.miou"] == pytest.approx(eager["miou"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_.info.run_id, "plots")}
    assert "plots/reliability.png" in artifacts
    assert result.metrics_uri.endswith("metrics.json")


def test_evaluate_without_figures_or_calibration_gives_the_same_iou_and_no_plots(tmp_path, student):
    """The bench's switches: the confusion matrix comes from the logits' argmax either way, so mIoU,
    per-class IoU and the per-condition mIoU are identical; calibration keys and plots are gone."""
    from dakd_core.evaluation.evaluate import EvalConfig, run

    ckpt, _ = student
    manifest = _manifest(tmp_path)
    full = run(EvalConfig(models=[f"eager={ckpt}"], manifest=manifest, out=str(tmp_path / "full"),
                          log_mlflow=False, grid_samples=1)).metrics["models"]["eager"]
    lean = run(EvalConfig(models=[f"eager={ckpt}"], manifest=manifest, out=str(tmp_path / "lean"), log_mlflow=False,
                          grid_samples=1, figures=False, calibration=False)).metrics["models"]["eager"]
    assert lean["miou"] == full["miou"] and lean["per_class_iou"] == full["per_class_iou"]
    assert lean["confusion"] == full["confusion"]
    assert {c: m["miou"] for c, m in lean["per_condition"].items()} == {c: m["miou"] for c, m in full["per_condition"].items()}
    assert "ece" in full and "mean_auprc" in full
    assert not {"ece", "reliability", "mean_auprc", "per_class_auprc"} & set(lean)
    assert (tmp_path / "full" / "plots" / "confusion_eager.png").exists()
    assert not (tmp_path / "lean" / "plots").exists()
    assert "eager" in (tmp_path / "lean" / "report.md").read_text()


def test_evaluate_refuses_tampered_onnx_and_publishes_nothing(tmp_path, student):
    from dakd_core.evaluation.evaluate import EvalConfig, run

    _, export_dir = student
    bad = tmp_path / "export"
    bad.mkdir()
    data = bytearray((export_dir / "student_fp32.onnx").read_bytes())
    data[-1] ^= 1
    (bad / "student_fp32.onnx").write_bytes(bytes(data))
    (bad / "export.json").write_text((export_dir / "export.json").read_text())
    out = tmp_path / "eval"
    with pytest.raises(DakdError, match="sha256 mismatch"):
        run(EvalConfig(models=[str(bad / "student_fp32.onnx")], manifest=_manifest(tmp_path), out=str(out), log_mlflow=False))
    assert not out.exists() or not any(out.rglob("*"))


def test_cli_score_prints_and_exits_2_on_bad_input(tmp_path, capsys):
    from dakd_core.cli import main

    root, pred_dir, _ = _cityscapes_tree(tmp_path, n=1)
    assert main(["score", "--pred", str(pred_dir), "--gt", str(root), "--gt-format", "cityscapes", "--out", str(tmp_path / "o")]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["score", "--pred", str(pred_dir), "--gt", str(tmp_path / "nope"), "--gt-format", "cityscapes", "--out", str(tmp_path / "o2")]) == 2
    assert "dakd score: error:" in capsys.readouterr().err
