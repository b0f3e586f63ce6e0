"""dakd score: score prediction PNGs against a dataset tree's ground truth."""

from __future__ import annotations

NAME = "score"
HELP = "score <sample_id>.png train-id predictions against ground truth (official-script mIoU)"


def add_arguments(p) -> None:
    p.add_argument("--pred", required=True, help="directory or store URI of prediction PNGs")
    p.add_argument("--gt", required=True, help="root of the ground-truth dataset tree")
    p.add_argument("--gt-format", required=True, help="cityscapes, acdc, gta5, synthia, bdd100k, mapillary")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="directory or store URI for metrics.json")


def run(args) -> int:
    from dakd_core.config import build_config
    from dakd_core.evaluation.score import ScoreConfig
    from dakd_core.evaluation.report import pct
    from dakd_core.evaluation.score import run as score

    cfg = build_config(ScoreConfig, pred=args.pred, gt=args.gt, gt_format=args.gt_format, split=args.split, out=args.out)
    from dakd_core.train.engine import open_output

    open_output(cfg.out, "out")  # a bad --out is refused before any input is read
    result = score(cfg)
    m = result.metrics
    print(f"mIoU {pct(m['miou'], 2)}  pixel acc {pct(m['pixel_accuracy'], 2)}  "
          f"({m['num_samples']} images) -> {result.metrics_uri}")
    return 0
