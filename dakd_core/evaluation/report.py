"""Markdown report of an evaluation: the paper-style table (one row per model: mIoU, the class
IoUs, pixel accuracy, in %) plus calibration and per-condition tables when available."""

from __future__ import annotations

from collections.abc import Sequence


def pct(v: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; "-" for None (undefined: e.g. no labelled pixel)."""
    return "-" if v is None else f"{100 * v:.{digits}f}"


def results_table(models: dict[str, dict], class_names: Sequence[str], miou_key: str = "miou") -> str:
    """| model | mIoU | road | ... | bicycle | pixel acc | — one row per model, values in %.

    `class_names` picks the columns (e.g. the SYNTHIA 16 subset, with miou_key "miou_16")."""
    header = ["model", "mIoU", *class_names, "pixel acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in models.items():
        cells = [name, pct(m[miou_key]), *(pct(m["per_class_iou"][c]) for c in class_names)]
        cells.append(pct(m["pixel_accuracy"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(models: dict[str, dict]) -> str:
    """Overall numbers beyond the IoU table: accuracies, calibration, ranking, speed."""
    header = ["model", "mIoU", "mIoU-16", "mIoU-13", "pixel acc", "mean class acc", "ECE", "mean AUPRC", "Mpx/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in models.items():
        speed = m.get("throughput_mpx_s")
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    pct(m["miou"]),
                    pct(m.get("miou_16")),
                    pct(m.get("miou_13")),
                    pct(m["pixel_accuracy"]),
                    pct(m["mean_class_accuracy"]),
                    pct(m.get("ece")),
                    pct(m.get("mean_auprc")),
                    "-" if speed is None else f"{speed:.2f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def condition_table(models: dict[str, dict]) -> str | None:
    """mIoU per condition (ACDC: fog, night, rain, snow) for each model, or None without conditions."""
    conditions = sorted({c for m in models.values() for c in m.get("per_condition", {})})
    if not conditions:
        return None
    lines = ["| model | " + " | ".join(conditions) + " |", "|" + "---|" * (len(conditions) + 1)]
    for name, m in models.items():
        per = m.get("per_condition", {})
        lines.append(f"| {name} | " + " | ".join(pct(per.get(c, {}).get("miou")) for c in conditions) + " |")
    return "\n".join(lines)


def markdown_report(
    models: dict[str, dict],
    class_names: Sequence[str],
    manifest_uri: str,
    manifest_sha256: str,
    figures: Sequence[str] = (),
    table_classes: Sequence[str] | None = None,
    miou_key: str = "miou",
) -> str:
    """The whole report.md; `figures` are file names of plots stored next to it."""
    parts = [
        "# Evaluation report",
        "",
        f"Manifest: `{manifest_uri}` (sha256 `{manifest_sha256[:16]}`), "
        f"{next(iter(models.values()))['num_samples']} images. Values in %.",
        "",
        "## Per-class IoU",
        "",
        results_table(models, table_classes or class_names, miou_key),
        "",
        "## Summary",
        "",
        summary_table(models),
    ]
    conditions = condition_table(models)
    if conditions:
        parts += ["", "## mIoU per condition", "", conditions]
    if figures:
        parts += ["", "## Plots", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(parts) + "\n"
