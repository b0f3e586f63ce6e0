"""Evaluate every model of the run on the target validation split, one table:
teacher source-only / adapted, student source-only / adapted / distilled (+ its FP16 export)."""

from typing import NamedTuple

from kfp.dsl import ClassificationMetrics, Markdown, Metrics, Output

from components._base import gpu_component


@gpu_component
def evaluate(
    store_uri: str, experiment: str, config: str, teacher_source_only: str, teacher_adapted: str,
    student_source_only: str, student_adapted: str, student_distilled: str, student_onnx_fp16: str,
    val_manifest: str, kfp_task: str, metrics: Output[Metrics], report: Output[Markdown],
    confusion: Output[ClassificationMetrics],
) -> NamedTuple("EvalOutputs", metrics_uri=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.evaluate import ROWS, evaluate_task

    uris = [teacher_source_only, teacher_adapted, student_source_only, student_adapted,
            student_distilled, student_onnx_fp16]
    out = evaluate_task(store_uri=store_uri, experiment=experiment, config=config, models=dict(zip(ROWS, uris)),
                        val_manifest=val_manifest, kfp_task=kfp_task)
    for name, miou in out["miou"].items():
        metrics.log_metric("miou " + name, float(miou))
    with open(report.path, "w") as f:
        f.write(out["report"])  # plots inlined: the UI renders it without the store
    if out["confusion"]["matrix"]:
        confusion.log_confusion_matrix(out["confusion"]["categories"], out["confusion"]["matrix"])
    return namedtuple("EvalOutputs", "metrics_uri")(out["metrics"])
