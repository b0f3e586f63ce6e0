"""Export the distilled student: ONNX FP32/FP16 and a TorchScript-AMP artifact, parity and latency."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import hw, run_identity, run_prefix, tracked
from dakd_core.orchestration.pins import pin, resolve


@tracked("export", lambda kw: run_identity("student"))
def export_task(*, store_uri: str, run_name: str, experiment: str, checkpoint: str, val_manifest: str,
                resolution: list, parity_samples: int = 0) -> dict:
    from dakd_core.config import build_config
    from dakd_core.export import ExportConfig, run

    cfg = build_config(
        ExportConfig, model=resolve(checkpoint), out=f"{run_prefix(store_uri, run_name)}/export",
        val_manifest=resolve(val_manifest), parity_samples=parity_samples or None,
        resolution=hw(resolution),
    )
    res = run(cfg)
    fp16 = res.record["artifacts"]["onnx_fp16"]
    return {
        "record": pin(res.record_uri),
        "onnx_fp16": fp16["uri"],
        "onnx_fp16_sha256": fp16["sha256"],
        "num_parameters": res.record.get("num_parameters"),
        "latency": res.record.get("latency", {}),
    }
