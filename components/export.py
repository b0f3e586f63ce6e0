"""Export the distilled student (`checkpoint`: the distill task's Model, through paradigm d's
branches): ONNX FP32/FP16 and a TorchScript-AMP artifact, parity and latency."""

from typing import NamedTuple

from kfp.dsl import Input, Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def export(
    store_uri: str, experiment: str, config: str, checkpoint: Input[Model], val_manifest: str, kfp_task: str,
    metrics: Output[Metrics], onnx_model: Output[Model],
) -> NamedTuple("ExportOutputs", record=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.artifacts import pinned, publish
    from dakd_core.orchestration.tasks.export import export_task

    out = export_task(store_uri=store_uri, experiment=experiment, config=config, checkpoint=pinned(checkpoint),
                      val_manifest=val_manifest, kfp_task=kfp_task)
    for kind, lat in out["latency"].items():
        if isinstance(lat, dict) and isinstance(lat.get("latency_ms"), (int, float)):
            metrics.log_metric(f"latency_ms_{kind}", float(lat["latency_ms"]))
    publish(onnx_model, f"{out['onnx_fp16']}#sha256={out['onnx_fp16_sha256']}", sha256=out["onnx_fp16_sha256"],
            format="onnx", precision="fp16", num_parameters=out["num_parameters"], export_record=out["record"])
    return namedtuple("ExportOutputs", "record")(out["record"])
