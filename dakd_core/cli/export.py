"""dakd export: ONNX FP32/FP16 and FP16 torch.export artifacts of a student, with parity and latency."""

from __future__ import annotations

NAME = "export"
HELP = "export a student checkpoint to ONNX FP32/FP16 + FP16 torch.export, check parity, time it"


def add_arguments(p) -> None:
    from dakd_core.cli.evaluate import _hw

    p.add_argument("--config", help="YAML file with ExportConfig fields")
    p.add_argument("--model", help="student checkpoint URI")
    p.add_argument("--out", help="output directory or store URI")
    p.add_argument("--val-manifest", help="manifest for the FP16 vs FP32 parity check")
    p.add_argument("--parity-samples", type=int)
    p.add_argument("--max-miou-delta", type=float, help="mIoU points FP16 may lose (default 0.1)")
    p.add_argument("--resolution", type=_hw, metavar="HxW", help="latency/parity resolution")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--opset", type=int)
    p.add_argument("--device")
    p.add_argument("--no-mlflow", dest="log_mlflow", action="store_const", const=False)


def run(args) -> int:
    from dakd_core.config import build_config
    from dakd_core.export import ExportConfig
    from dakd_core.export import run as export

    cfg = build_config(
        ExportConfig, args.config, model=args.model, out=args.out, val_manifest=args.val_manifest,
        parity_samples=args.parity_samples, max_miou_delta=args.max_miou_delta, resolution=args.resolution,
        batch_size=args.batch_size, iters=args.iters, opset=args.opset, device=args.device,
        log_mlflow=args.log_mlflow,
    )
    from dakd_core.train.engine import open_output

    open_output(cfg.out, "out")  # a bad --out is refused before any input is read
    result = export(cfg)
    rec = result.record
    for kind, a in rec["artifacts"].items():
        print(f"{kind:11s} {a['uri']}  sha256 {a['sha256'][:16]}")
    for name, m in rec["latency"].items():
        if isinstance(m, dict):
            print(f"{name:15s} {m['latency_ms']:8.2f} ms  {m['throughput_img_s']:8.2f} img/s")
    if "parity" in rec:
        p = rec["parity"]
        print(f"parity: max prob diff {p['max_prob_diff']:.4g}, mIoU delta {p['miou_delta_points']:.3f} points")
    print(f"record: {result.record_uri}")
    return 0
