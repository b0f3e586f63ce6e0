"""`dakd evaluate`: run one or more models over a manifest and report.

For every labelled manifest row: decode the image once, run each model (whole image at the
configured resolution, or sliding window), upsample the logits to the label's resolution and
accumulate the metrics on the device. Outputs under `cfg.out`: plots/*.png, report.md and, last
(it is the index a later stage reads), metrics.json:

    {"manifest_uri", "manifest_sha256", "num_samples",
     "models": {display name: {"uri", "kind", "num_parameters", "miou", "miou_16", "miou_13",
                "pixel_accuracy", "mean_class_accuracy", "per_class_iou", "ece", "reliability",
                "per_class_auprc", "mean_auprc", "per_condition"?, "throughput_mpx_s", ...}}}
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import torch
from pydantic import Field
from tqdm import tqdm

from dakd_core.config import HW, StrictConfig
from dakd_core.errors import ConfigError, DataError
from dakd_core.evaluation import plots
from dakd_core.evaluation.inference import load_predictor, no_progress, predict_logits, resolve_device, sha256_hex
from dakd_core.evaluation.metrics import SegmentationMetrics
from dakd_core.evaluation.report import markdown_report
from dakd_core.evaluation.score import METRICS_FILE, class_subsets

REPORT_FILE = "report.md"


class EvalConfig(StrictConfig):
    models: list[str] = Field(min_length=1, description="model URIs, optionally 'display name=URI'")
    manifest: str = Field(description="manifest.parquet URI of the evaluation split")
    out: str = Field(description="directory or store URI receiving metrics.json, report.md, plots/")
    resolution: HW | None = Field(None, description="inference (H, W); None: native")
    window: HW | None = Field(None, description="sliding-window tile (H, W); None: whole image")
    stride: HW | None = Field(None, description="sliding-window step (H, W); default half a tile")
    device: str = "auto"
    amp: bool = True
    table_classes: int = Field(19, description="columns of the paper table: 19, or 16/13 for SYNTHIA sources")
    grid_samples: int = Field(4, ge=0)
    figures: bool = Field(True, description="write plots/*.png: per-class IoU bars, a confusion matrix per model, "
                          "reliability and prediction grids")
    calibration: bool = Field(True, description="accumulate ECE, reliability and per-class AUPRC from the softmax; "
                              "off: mIoU and the confusion matrix only")
    max_samples: int | None = Field(None, gt=0)
    sha256: dict[str, str] = Field(default_factory=dict, description="explicit sha256 per ONNX model URI")
    log_mlflow: bool = True


@dataclass
class EvalResult:
    metrics_uri: str
    report_uri: str
    metrics: dict


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """'name=uri' or 'uri' -> {display name: uri}; default names are file stems, made unique."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, uri = spec.partition("=")
        if not sep or "/" in name or ":" in name:
            uri, name = spec, re.sub(r"\.(onnx|pt|pth|ckpt)$", "", spec.rstrip("/").rsplit("/", 1)[-1])
        if not uri:
            raise ConfigError(f"models: empty URI in '{spec}'")
        base, i = name or "model", 2
        while name in named:
            name, i = f"{base}-{i}", i + 1
        named[name] = uri
    return named


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def run(cfg: EvalConfig) -> EvalResult:
    from dakd_core.data.manifest import read_manifest, read_row_image, read_row_label
    from dakd_core.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
    from dakd_core.storage import open_store, read_bytes

    table_subsets = {19: (None, "miou"), **{int(k): (v, f"miou_{k}") for k, v in class_subsets().items()}}
    if cfg.table_classes not in table_subsets:
        raise ConfigError(f"table_classes must be 19, 16 or 13, got {cfg.table_classes}")
    models = parse_model_specs(cfg.models)
    device = resolve_device(cfg.device)
    manifest_sha = sha256_hex(read_bytes(cfg.manifest))
    rows = [r for r in read_manifest(cfg.manifest) if r.get("label_uri")]
    if not rows:
        raise DataError(f"manifest {cfg.manifest} has no labelled rows to evaluate on")
    rows = rows[: cfg.max_samples] if cfg.max_samples else rows

    predictors = {name: load_predictor(uri, device, cfg.amp, cfg.sha256.get(uri)) for name, uri in models.items()}
    totals = {name: SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX) for name in models}
    per_condition: dict[str, dict[str, SegmentationMetrics]] = {name: {} for name in models}
    seconds = dict.fromkeys(models, 0.0)
    megapixels = 0.0
    grid: dict[str, list] = {name: [] for name in models}

    for row in tqdm(rows, desc="evaluate", unit="img", disable=no_progress()):
        image = read_row_image(row, cfg.manifest)
        label_np = read_row_label(row, cfg.manifest)
        label = torch.from_numpy(label_np).unsqueeze(0).to(device)
        h, w = cfg.resolution or image.shape[:2]
        megapixels += h * w / 1e6
        for name, predictor in predictors.items():
            start = time.perf_counter()
            logits = predict_logits(predictor, image, label_np.shape, cfg.resolution, cfg.window, cfg.stride)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] += time.perf_counter() - start
            # probabilities feed the calibration statistics; the argmax alone feeds the confusion matrix
            scores = logits.softmax(dim=1) if cfg.calibration else logits.argmax(dim=1)
            totals[name].update(scores, label)
            if row.get("condition"):
                per_condition[name].setdefault(
                    row["condition"], SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
                ).update(scores, label)
            if len(grid[name]) < cfg.grid_samples:
                pred = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
                grid[name].append((row["sample_id"], image, label_np, pred))

    subsets = class_subsets()
    results: dict[str, dict] = {}
    for name, uri in models.items():
        m = totals[name].compute(CLASS_NAMES, subsets)
        if per_condition[name]:
            m["per_condition"] = {c: acc.compute(CLASS_NAMES, subsets) for c, acc in sorted(per_condition[name].items())}
        m.update(
            uri=uri,
            kind=predictors[name].kind,
            num_parameters=predictors[name].num_parameters,
            num_samples=len(rows),
            throughput_mpx_s=megapixels / seconds[name] if seconds[name] > 0 else None,
            # rows: ground truth, columns: prediction (void predictions dropped); the pipeline
            # shows it as a KFP ClassificationMetrics artifact
            confusion=totals[name].confusion().tolist(),
        )
        results[name] = m

    out = open_store(cfg.out)
    figures = _figures(results, totals, grid, CLASS_NAMES) if cfg.figures else {}
    for file_name, fig in figures.items():
        out.put_bytes(f"plots/{file_name}", plots.figure_png(fig))
    columns, miou_key = table_subsets[cfg.table_classes]
    report = markdown_report(
        results,
        CLASS_NAMES,
        cfg.manifest,
        manifest_sha,
        figures=[f"plots/{f}" for f in figures],
        table_classes=None if columns is None else [CLASS_NAMES[i] for i in columns],
        miou_key=miou_key,
    )
    report_uri = out.put_bytes(REPORT_FILE, report.encode())
    metrics = {
        "manifest_uri": cfg.manifest,
        "manifest_sha256": manifest_sha,
        "num_samples": len(rows),
        "device": str(device),
        "models": results,
    }
    metrics_uri = out.put_bytes(METRICS_FILE, json.dumps(metrics, indent=2).encode())  # last: the index
    if cfg.log_mlflow:
        _log_mlflow(cfg, metrics, out)
    return EvalResult(metrics_uri, report_uri, metrics)


def _figures(results, totals, grid, class_names) -> dict:
    figures = {"per_class_iou.png": plots.iou_bars({n: m["per_class_iou"] for n, m in results.items()})}
    for name, acc in totals.items():
        figures[f"confusion_{_slug(name)}.png"] = plots.confusion_matrix_plot(
            acc.confusion(), class_names, f"{name}: row-normalised confusion"
        )
        if grid[name]:
            figures[f"samples_{_slug(name)}.png"] = plots.prediction_grid(grid[name])
    reliability = {n: {**m["reliability"], "ece": m["ece"]} for n, m in results.items() if "reliability" in m}
    if reliability:
        figures["reliability.png"] = plots.reliability_diagram(reliability)
    return figures


def _log_mlflow(cfg: EvalConfig, metrics: dict, out) -> None:
    """Numbers as MLflow metrics (prefixed by the model name when several), files as artifacts."""
    from dakd_core import tracking

    several = len(metrics["models"]) > 1
    with tracking.stage_run("evaluate", params={"manifest": cfg.manifest, "models": ",".join(cfg.models)}):
        for name, m in metrics["models"].items():
            prefix = f"{_slug(name)}." if several else ""
            scalars = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            scalars.update({f"iou.{_slug(c)}": v for c, v in m["per_class_iou"].items() if v is not None})
            for cond, cm in m.get("per_condition", {}).items():
                scalars[f"miou.{_slug(cond)}"] = cm["miou"]
            tracking.log_metrics({prefix + k: v for k, v in scalars.items() if v is not None})
        tracking.log_dict(metrics, METRICS_FILE)
        for key in out.list():
            if key.endswith(".png") or key == REPORT_FILE:
                tracking.log_bytes(out.get_bytes(key), key)
