"""Figures of an evaluation: per-class IoU bars, confusion matrix, prediction grid, reliability.

Each function returns a matplotlib Figure (Agg backend, no display needed); `figure_png` turns
one into PNG bytes for the object store, and the caller logs the same figure to MLflow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def iou_bars(per_class_iou: dict[str, dict[str, float | None]]) -> Figure:
    """Grouped bars: one group per class, one bar per model; absent classes are left empty."""
    models = list(per_class_iou)
    classes = list(next(iter(per_class_iou.values())))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(8, len(classes) * 0.6), 4))
    x = np.arange(len(classes))
    for i, model in enumerate(models):
        values = [np.nan if v is None else 100 * v for v in per_class_iou[model].values()]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=model)
    ax.set_xticks(x, classes, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU")
    if len(models) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def confusion_matrix_plot(cm: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Row-normalised (each ground-truth class sums to 1) confusion matrix."""
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def prediction_grid(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Figure:
    """One row per (name, image RGB, ground truth ids, prediction ids), in the Cityscapes palette."""
    from dakd_core.labels import colorize

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.2 * len(rows)), squeeze=False)
    for r, (name, image, gt, pred) in enumerate(rows):
        for c, (panel, title) in enumerate(
            ((image, name), (colorize(gt), "ground truth"), (colorize(pred), "prediction"))
        ):
            axes[r, c].imshow(panel)
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    return fig


def reliability_diagram(reliability: dict[str, dict]) -> Figure:
    """Accuracy vs confidence per bin for each model, with the diagonal of perfect calibration."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    for model, rel in reliability.items():
        conf = np.array([np.nan if v is None else v for v in rel["confidence"]], dtype=float)
        acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=float)
        keep = ~np.isnan(conf)
        # ECE is None (and every bin empty) when the labels hold no valid pixel, e.g. all void.
        ece = "n/a, no labelled pixels" if rel["ece"] is None else f"{100 * rel['ece']:.1f}%"
        ax.plot(conf[keep], acc[keep], "o-", label=f"{model} (ECE {ece})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability diagram")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
