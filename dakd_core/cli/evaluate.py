"""dakd evaluate: metrics, report and plots of one or more models on a manifest."""

from __future__ import annotations

NAME = "evaluate"
HELP = "evaluate checkpoints / ONNX / registry models on a manifest (metrics.json, report.md, plots)"


def _hw(text: str) -> list[int]:
    h, _, w = text.lower().partition("x")
    return [int(h), int(w)]


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML file with EvalConfig fields")
    p.add_argument("--model", dest="models", action="append", metavar="[NAME=]URI",
                   help="checkpoint, .onnx or models:/NAME@alias; repeat for one table of several models")
    p.add_argument("--manifest", help="manifest.parquet URI")
    p.add_argument("--out", help="output directory or store URI")
    p.add_argument("--resolution", type=_hw, metavar="HxW", help="inference size, e.g. 512x1024")
    p.add_argument("--window", type=_hw, metavar="HxW", help="sliding-window tile size")
    p.add_argument("--stride", type=_hw, metavar="HxW", help="sliding-window step")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="float32 on CUDA")
    p.add_argument("--table-classes", type=int, choices=(19, 16, 13), help="paper-table columns")
    p.add_argument("--max-samples", type=int)
    p.add_argument("--sha256", action="append", metavar="URI=HEX", help="expected sha256 of an ONNX model")
    p.add_argument("--no-mlflow", dest="log_mlflow", action="store_const", const=False)


def run(args) -> int:
    from dakd_core.config import build_config
    from dakd_core.errors import ConfigError
    from dakd_core.evaluation.evaluate import EvalConfig
    from dakd_core.evaluation.evaluate import run as evaluate
    from dakd_core.evaluation.report import pct

    hashes = None
    if args.sha256:
        pairs = [s.rpartition("=") for s in args.sha256]
        for given, (_, sep, _) in zip(args.sha256, pairs):
            if not sep:
                raise ConfigError(f"--sha256 {given!r}: expected URI=HEX")
        hashes = {uri: hex_ for uri, _, hex_ in pairs}
    cfg = build_config(
        EvalConfig, args.config, models=args.models, manifest=args.manifest, out=args.out,
        resolution=args.resolution, window=args.window, stride=args.stride, device=args.device,
        amp=args.amp, table_classes=args.table_classes, max_samples=args.max_samples, sha256=hashes,
        log_mlflow=args.log_mlflow,
    )
    from dakd_core.train.engine import open_output

    open_output(cfg.out, "out")  # a bad --out is refused before any input is read
    result = evaluate(cfg)
    for name, m in result.metrics["models"].items():
        print(f"{name}: mIoU {pct(m['miou'], 2)}  pixel acc {pct(m['pixel_accuracy'], 2)}"
              + ("" if m["labelled_pixels"] else "  (no labelled pixel in the manifest: metrics undefined)"))
    print(f"metrics: {result.metrics_uri}\nreport:  {result.report_uri}")
    return 0
