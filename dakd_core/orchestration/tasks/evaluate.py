"""Evaluate every model of the run on the target validation split, one table:
teacher source-only / adapted, student source-only / adapted / distilled (+ its FP16 export)."""

from __future__ import annotations

import json
import re

from dakd_core.orchestration.pins import pin, resolve, split
from dakd_core.orchestration.tasks.common import stage_out, tracked

# Display names, in table order; `dakd run` prints the same rows.
ROWS = ["teacher source-only", "teacher adapted", "student source-only", "student adapted",
        "student distilled", "student distilled ONNX FP16"]
# The row whose confusion matrix the pipeline shows (KFP ClassificationMetrics).
CONFUSION_ROW = "student distilled"
# The pipeline's headline gain: what distillation adds over the student adapted on its own.
GAIN = ("gain.distilled_vs_adapted_student", "student distilled", "student adapted")


def headline_metrics(miou: dict[str, float]) -> dict[str, float]:
    """The parent run's metrics: `miou.<row>` per evaluated row and the distillation gain."""
    out = {"miou." + re.sub(r"[^a-z0-9]+", "_", row.lower()).strip("_"): v for row, v in miou.items()}
    key, distilled, adapted = GAIN
    if distilled in miou and adapted in miou:
        out[key] = miou[distilled] - miou[adapted]
    return out


@tracked("evaluate")
def evaluate_task(*, store_uri: str, experiment: str, config: str, models: dict, val_manifest: str) -> dict:
    """`models`: display name -> pinned URI (checkpoints verified here, ONNX by evaluate's sha256).
    The headline metrics reach the parent run through the (uncached) register task."""
    from dakd_core.config import build_config
    from dakd_core.evaluation.evaluate import EvalConfig, run

    specs, sha = [], {}
    for name, pinned in models.items():
        uri, digest = split(pinned)
        if uri.lower().endswith(".onnx"):
            sha[uri] = digest  # evaluate verifies ONNX bytes itself, no second read here
        else:
            uri = resolve(pinned)
        specs.append(f"{name}={uri}")
    settings = json.loads(config)
    out = stage_out(store_uri, "evaluate", settings, {"models": models, "val_manifest": val_manifest})
    cfg = build_config(EvalConfig, **settings, models=specs, manifest=resolve(val_manifest), out=out,
                       sha256={k: v for k, v in sha.items() if v})
    res = run(cfg)
    from dakd_core.storage import read_bytes

    miou = {name: m["miou"] for name, m in res.metrics["models"].items()}
    report = embed_plots(read_bytes(res.report_uri).decode(), res.report_uri.rsplit("/", 1)[0])
    distilled = res.metrics["models"].get(CONFUSION_ROW, {})
    confusion = {"categories": list(distilled.get("per_class_iou", {})), "matrix": distilled.get("confusion", [])}
    return {"metrics": pin(res.metrics_uri), "report": report, "miou": miou, "confusion": confusion}


def embed_plots(report: str, folder_uri: str) -> str:
    """The report with each `![name](plots/x.png)` as an inline data: URI. The KFP UI renders a
    Markdown artifact on its own, without the files next to it on the store."""
    import base64

    from dakd_core.storage import read_bytes

    def inline(match: re.Match) -> str:
        png = read_bytes(f"{folder_uri}/{match.group(2)}")
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(png).decode()})"

    return re.sub(r"!\[([^\]]*)\]\((plots/[^)\s]+\.png)\)", inline, report)
