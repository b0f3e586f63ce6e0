"""Export the distilled student: ONNX FP32/FP16 and a TorchScript-AMP artifact, parity and latency."""

from __future__ import annotations

import json

from dakd_core.orchestration.pins import pin, resolve
from dakd_core.orchestration.tasks.common import run_identity, stage_out, tracked


@tracked("export", lambda kw: run_identity("student"))
def export_task(*, store_uri: str, experiment: str, config: str, checkpoint: str, val_manifest: str,
                parity_samples: int = 0) -> dict:
    from dakd_core.config import build_config
    from dakd_core.export import ExportConfig, run

    settings = json.loads(config)
    out = stage_out(store_uri, "export", settings, {"checkpoint": checkpoint, "val_manifest": val_manifest,
                                                    "parity_samples": parity_samples})
    cfg = build_config(ExportConfig, **settings, model=resolve(checkpoint), out=out,
                       val_manifest=resolve(val_manifest), parity_samples=parity_samples or None)
    res = run(cfg)
    fp16 = res.record["artifacts"]["onnx_fp16"]
    return {
        "record": pin(res.record_uri),
        "onnx_fp16": fp16["uri"],
        "onnx_fp16_sha256": fp16["sha256"],
        "num_parameters": res.record.get("num_parameters"),
        "latency": res.record.get("latency", {}),
    }
