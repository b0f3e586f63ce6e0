"""`dakd score`: score prediction PNGs against a dataset tree's ground truth.

Predictions are single-channel 8-bit PNGs of train ids, one `<sample_id>.png` per labelled sample
of the split (sample ids as `dakd_core.data.formats.discover` defines them); any id other than
0..18 and 255 is refused (DataError naming the file), as are ground-truth ids outside the format's
table. Pixels predicted 255 count as misses, as the official Cityscapes script counts ignored
label ids. The metric code is `metrics.SegmentationMetrics`, the same as `dakd evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from pydantic import Field
from tqdm import tqdm

from dakd_core.config import StrictConfig
from dakd_core.errors import DataError, StoreError
from dakd_core.evaluation.inference import no_progress
from dakd_core.evaluation.metrics import SegmentationMetrics

METRICS_FILE = "metrics.json"


class ScoreConfig(StrictConfig):
    pred: str = Field(description="directory or store URI holding <sample_id>.png train-id predictions")
    gt: str = Field(description="root of the ground-truth dataset tree")
    gt_format: str = Field(description="layout of the ground truth (cityscapes, acdc, ...)")
    split: str = "val"
    out: str = Field(description="directory or store URI receiving metrics.json")


@dataclass
class ScoreResult:
    metrics_uri: str
    metrics: dict


def class_subsets() -> dict[str, list[int]]:
    """The SYNTHIA subsets every report carries next to the 19-class mIoU."""
    from dakd_core.labels import SYNTHIA_13, SYNTHIA_16

    return {"16": list(SYNTHIA_16), "13": list(SYNTHIA_13)}


def check_train_ids(ids, what: str) -> None:
    """DataError naming `what` unless every pixel is a train id 0..18 or 255 (ignore).

    Any other value is not a class: counted as a miss, a map written in the wrong id space (raw
    Cityscapes ids, colour indices) would still give a plausible-looking, wrong mIoU."""
    import numpy as np

    from dakd_core.labels import IGNORE_INDEX, NUM_CLASSES

    bad = np.unique(ids[(ids >= NUM_CLASSES) & (ids != IGNORE_INDEX)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise DataError(f"{what} holds ids [{shown}] outside the train ids 0..{NUM_CLASSES - 1} and "
                        f"{IGNORE_INDEX} (ignore): not a train-id map")


def run(cfg: ScoreConfig) -> ScoreResult:
    from dakd_core.data.formats import discover, read_label
    from dakd_core.data.imageio import decode_label
    from dakd_core.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
    from dakd_core.storage import open_store

    samples = [s for s in discover(cfg.gt_format, cfg.gt, cfg.split) if s.label_path is not None]
    if not samples:
        raise DataError(f"no labelled {cfg.split} samples in {cfg.gt} (format {cfg.gt_format})")
    pred_store = open_store(cfg.pred)
    total = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    by_condition: dict[str, SegmentationMetrics] = {}
    for sample in tqdm(samples, desc="score", unit="img", disable=no_progress()):
        key = f"{sample.sample_id}.png"
        try:
            data = pred_store.get_bytes(key)
        except StoreError:
            raise DataError(f"missing prediction {pred_store.url(key)} for sample {sample.sample_id}") from None
        pred = decode_label(data, pred_store.url(key))
        check_train_ids(pred, f"prediction {pred_store.url(key)}")
        gt = read_label(sample.label_path, cfg.gt_format)
        if pred.shape != gt.shape:
            raise DataError(
                f"prediction {pred_store.url(key)} is {pred.shape[1]}x{pred.shape[0]} but its ground "
                f"truth {sample.label_path} is {gt.shape[1]}x{gt.shape[0]}"
            )
        pred_t, gt_t = torch.from_numpy(pred), torch.from_numpy(gt)
        total.update(pred_t, gt_t)
        if sample.condition:
            by_condition.setdefault(sample.condition, SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)).update(
                pred_t, gt_t
            )

    subsets = class_subsets()
    metrics = total.compute(CLASS_NAMES, subsets)
    metrics.update(num_samples=len(samples), gt_format=cfg.gt_format, split=cfg.split)
    if by_condition:
        metrics["per_condition"] = {
            cond: acc.compute(CLASS_NAMES, subsets) for cond, acc in sorted(by_condition.items())
        }
    out_store = open_store(cfg.out)
    uri = out_store.put_bytes(METRICS_FILE, json.dumps(metrics, indent=2).encode())
    return ScoreResult(uri, metrics)
