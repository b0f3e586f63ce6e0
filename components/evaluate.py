"""Evaluate every model of the run on the target validation split, one table:
teacher source-only / adapted, student source-only / adapted / distilled (+ its FP16 export),
each the Model artifact of the task that produced it."""

from typing import NamedTuple

from kfp.dsl import ClassificationMetrics, Input, Markdown, Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def evaluate(
    store_uri: str, experiment: str, config: str, teacher_source_only: Input[Model], teacher_adapted: Input[Model],
    student_source_only: Input[Model], student_adapted: Input[Model], student_distilled: Input[Model],
    student_onnx_fp16: Input[Model], val_manifest: str, kfp_task: str, metrics: Output[Metrics],
    report: Output[Markdown], confusion: Output[ClassificationMetrics],
) -> NamedTuple("EvalOutputs", metrics_uri=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.artifacts import pinned
    from dakd_core.orchestration.tasks.evaluate import ROWS, evaluate_task

    models = [teacher_source_only, teacher_adapted, student_source_only, student_adapted,
              student_distilled, student_onnx_fp16]
    out = evaluate_task(store_uri=store_uri, experiment=experiment, config=config,
                        models=dict(zip(ROWS, map(pinned, models))), val_manifest=val_manifest, kfp_task=kfp_task)
    for name, miou in out["miou"].items():
        metrics.log_metric("miou " + name, float(miou))
    with open(report.path, "w") as f:
        f.write(out["report"])  # plots inlined: the UI renders it without the store
    if out["confusion"]["matrix"]:
        confusion.log_confusion_matrix(out["confusion"]["categories"], out["confusion"]["matrix"])
    return namedtuple("EvalOutputs", "metrics_uri")(out["metrics"])
