"""Export the distilled student: ONNX FP32/FP16 and a TorchScript-AMP artifact, parity and latency."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def export(
    store_uri: str, experiment: str, config: str, checkpoint: str, val_manifest: str, kfp_task: str,
    metrics: Output[Metrics], onnx_model: Output[Model],
) -> NamedTuple("ExportOutputs", record=str, onnx_fp16=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.export import export_task

    out = export_task(store_uri=store_uri, experiment=experiment, config=config, checkpoint=checkpoint,
                      val_manifest=val_manifest, kfp_task=kfp_task)
    for kind, lat in out["latency"].items():
        if isinstance(lat, dict) and isinstance(lat.get("latency_ms"), (int, float)):
            metrics.log_metric(f"latency_ms_{kind}", float(lat["latency_ms"]))
    onnx_model.uri = out["onnx_fp16"]
    onnx_model.metadata.update(sha256=out["onnx_fp16_sha256"], format="onnx", precision="fp16",
                               num_parameters=out["num_parameters"], export_record=out["record"])
    pinned_onnx = f"{out['onnx_fp16']}#sha256={out['onnx_fp16_sha256']}"
    return namedtuple("ExportOutputs", "record onnx_fp16")(out["record"], pinned_onnx)
