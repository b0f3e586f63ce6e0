"""Does ROAD's L_dist pull the student back towards source-normalised features? A probe on a
finished `dakd bench results` run.

ROAD's L_dist compares the student's target features, which BatchNorm normalises with the target
batch's own statistics (uda_common.forward_by_domain), with the frozen reference's features of the
same crops. Under road_reference 'init' (the bench's `student_road` row) the reference is the
source-only checkpoint in eval mode: it normalises the target crops with its SOURCE running
statistics. The control that removes only that cause is `road_reference_statistics` 'batch' (the
reference normalises the target crops with their own batch statistics); everything else - data,
init, seed, steps, weights - is the bench row's exact config, read from the row's checkpoint.

Per seed of the bench run, this script runs `dakd adapt` (dakd_core.train.adapt.run on the config
built the CLI's way) once per `--variants` entry - 'running' (must reproduce the bench's
student_road), 'batch', and optionally 'no_dist' (road_lambda_dist 0: the row without L_dist) -
then evaluates each run's tune-selected checkpoint (best.pt, selected on tune as the bench selects
it) and the bench's own student_road / student_adapted checkpoints on the seed's target tune and
val splits, the way `dakd bench results` evaluates (dakd_core.evaluation.evaluate, at the preset's
resolution). The bench's work directory is only read.

    nice -n 19 python benchmarks/road_reference_probe.py --work WORK --out /tmp/roadprobe --seeds 0,1,2 \
        --variants running,batch,no_dist

WORK is the `--out` of `dakd bench results` (store/runs/seed<N>/adapt_student_road/best.pt holds the
row's config, its tune manifest the seed's; --results, the run's results.json, names the seeds'
tune and val manifests and the student_road mIoU the bench recorded). One torch thread, as each
seed's bench process ran: the 'running' run can then reproduce the bench's weights exactly. Writes
OUT/road_reference_probe.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from dakd_core.train.configs import METHOD_PREFIXES

NEW_FIELD = "road_reference_statistics"
# The runs of the bench row's config, by name: its own ('running', today's default), the control
# that removes the cause under test ('batch'), and, for scale, the row without L_dist at all.
VARIANTS = {
    "running": {NEW_FIELD: "running"},
    "batch": {NEW_FIELD: "batch"},
    "no_dist": {"road_lambda_dist": 0.0},
}


def bench_config(run_dir: str) -> dict:
    """The bench row's AdaptConfig fields (stored in its checkpoint) after checking that they hash
    to the row's recorded config hash: the config reproduced is the one that trained the row."""
    from dakd_core.models.checkpoint import load_checkpoint

    payload = load_checkpoint(f"{run_dir}/best.pt", map_location="cpu")
    recorded = json.loads(Path(run_dir, "result.json").read_text())["config_hash"]
    stored = payload["config"]
    # the checkpoint records every field; another method's (diga_*, sfda_*) are refused when given
    fields = {k: v for k, v in stored.items()
              if not any(k.startswith(p) and p[:-1] != stored["method"] for p in METHOD_PREFIXES)}
    if _identity_hash(fields, stored) != recorded:
        raise SystemExit(f"{run_dir}: the checkpoint's config does not hash to result.json's {recorded}")
    return fields


def _identity_hash(fields: dict, stored: dict) -> str:
    """engine.config_hash of the config built from `fields`, over the fields the bench's code had
    (`stored`; fields added since, such as road_reference_statistics, are left out: at their
    defaults they are the bench's behaviour)."""
    from dakd_core.config import build_config
    from dakd_core.train.configs import AdaptConfig
    from dakd_core.train.engine import config_identity, identity_hash

    identity = config_identity(build_config(AdaptConfig, None, **fields))
    return identity_hash({k: v for k, v in identity.items() if k in stored})


def adapt(fields: dict, overrides: dict, out: Path) -> dict:
    """One `dakd adapt` run of the row's config with `overrides`."""
    from dakd_core.config import build_config
    from dakd_core.train import adapt as adapt_stage
    from dakd_core.train.configs import AdaptConfig

    cfg = build_config(AdaptConfig, None, **dict(fields, out=out.as_uri(), log_mlflow=False, **overrides))
    started = time.perf_counter()
    result = adapt_stage.run(cfg)
    return {"best": result.best_checkpoint_uri, "tune_select": result.metrics["select/best_miou"],
            "best_step": result.metrics["best_step"], "seconds": round(time.perf_counter() - started, 1)}


def evaluate(models: dict[str, str], manifest: str, out: Path, resolution) -> dict:
    from dakd_core.evaluation.evaluate import EvalConfig, run

    cfg = EvalConfig(models=[f"{k}={v}" for k, v in models.items()], manifest=manifest, out=str(out),
                     resolution=resolution, device="cpu", grid_samples=0, log_mlflow=False, figures=False,
                     calibration=False)
    return {k: {"miou": m["miou"], "sky": m["per_class_iou"]["sky"]} for k, m in run(cfg).metrics["models"].items()}


def probe_seed(work: Path, seed: int, out: Path, bench: dict, variants: list[str]) -> dict:
    runs = work / "store" / "runs" / f"seed{seed}"
    fields = bench_config(str(runs / "adapt_student_road"))
    tune = fields["select_manifest"]
    val = tune.replace("/tune/manifest.parquet", "/val/manifest.parquet")
    if (bench["tune_manifests"][str(seed)], bench["val_manifests"][str(seed)]) != (tune, val):
        raise SystemExit(f"seed {seed}: the row's tune manifest {tune} is not the bench document's")
    trained = {v: adapt(fields, VARIANTS[v], out / f"seed{seed}" / v) for v in variants}
    models = {v: t["best"] for v, t in trained.items()}
    models["bench_student_road"] = (runs / "adapt_student_road" / "best.pt").as_uri()
    models["bench_student_adapted"] = (runs / "adapt_student" / "best.pt").as_uri()
    resolution = tuple(fields["select_resize"])
    scores = {split: evaluate(models, manifest, out / f"eval_{split}_seed{seed}", resolution)
              for split, manifest in (("tune", tune), ("val", val))}
    recorded = bench["rows"]["student_road"]
    return {"trained": trained, "tune_manifest": tune, "val_manifest": val,
            "bench_recorded": {"tune": recorded["tune_miou_per_seed"][str(seed)], "val": recorded["miou_per_seed"][str(seed)]},
            "models": {k: {"tune": scores["tune"][k]["miou"], "val": scores["val"][k]["miou"],
                           "val_sky": scores["val"][k]["sky"]} for k in models}}


def _mean_std(values: list[float]) -> str:
    arr = 100 * np.array(values)
    return f"{arr.mean():.2f} ± {arr.std(ddof=1) if len(arr) > 1 else 0.0:.2f}"


def markdown(per_seed: dict[int, dict]) -> str:
    seeds = sorted(per_seed)
    lines = ["| model | seed | tune mIoU | val mIoU | val sky IoU | best step | adapt s |", "|---|---:|---:|---:|---:|---:|---:|"]
    names = list(per_seed[seeds[0]]["models"])
    for name in names:
        for s in seeds:
            m, t = per_seed[s]["models"][name], per_seed[s]["trained"].get(name, {})
            lines.append(f"| {name} | {s} | {100 * m['tune']:.2f} | {100 * m['val']:.2f} | {100 * m['val_sky']:.1f} | "
                         f"{t.get('best_step', '')} | {t.get('seconds', '')} |")
        lines.append(f"| {name} | mean ± std | {_mean_std([per_seed[s]['models'][name]['tune'] for s in seeds])} | "
                     f"{_mean_std([per_seed[s]['models'][name]['val'] for s in seeds])} | "
                     f"{_mean_std([per_seed[s]['models'][name]['val_sky'] for s in seeds])} | | |")
    lines += ["", "| difference | metric | mean ± std (points) | seeds where it is > 0 |", "|---|---|---:|---:|"]
    for name in [n for n in per_seed[seeds[0]]["trained"] if n != "running"]:
        for metric in ("tune", "val", "val_sky"):
            diff = [per_seed[s]["models"][name][metric] - per_seed[s]["models"]["running"][metric] for s in seeds]
            lines.append(f"| {name} − running | {metric} | {_mean_std(diff)} | {sum(d > 0 for d in diff)}/{len(diff)} |")
    lines += ["", f"| reproduction (points, seeds {', '.join(map(str, seeds))}) | tune | val |", "|---|---|---|"]
    pairs = (("'running' − bench student_road, both evaluated here", lambda s: per_seed[s]["models"]["running"],
              lambda s: per_seed[s]["models"]["bench_student_road"]),
             ("bench student_road evaluated here − as the bench recorded it", lambda s: per_seed[s]["models"]["bench_student_road"],
              lambda s: per_seed[s]["bench_recorded"]))
    for text, left, right in pairs:
        cells = [", ".join(f"{100 * (left(s)[m] - right(s)[m]):+.2f}" for s in seeds) for m in ("tune", "val")]
        lines.append(f"| {text} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, type=Path, help="the `dakd bench results --out` directory (read only)")
    p.add_argument("--out", required=True, type=Path, help="receives the runs, evaluations and the JSON")
    p.add_argument("--results", type=Path, default=Path("docs/results.json"),
                   help="the bench run's results document (its seeds' manifests and recorded student_road mIoU)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="running,batch",
                   help=f"comma list of {', '.join(VARIANTS)} (running is required: the others are compared with it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the bench's seed processes ran 1)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.out.resolve()}/mlruns.db")  # not logged to
    started = time.perf_counter()
    variants = args.variants.split(",")
    if "running" not in variants or not set(variants) <= set(VARIANTS):
        p.error(f"--variants: running plus any of {', '.join(VARIANTS)}, got {args.variants}")
    bench = json.loads(args.results.read_text())
    per_seed = {int(s): probe_seed(args.work.resolve(), int(s), args.out.resolve(), bench, variants)
                for s in args.seeds.split(",")}
    table = markdown(per_seed)
    doc = {"seeds": {str(s): d for s, d in per_seed.items()}, "threads": args.threads,
           "wall_seconds": round(time.perf_counter() - started, 1), "table": table}
    (args.out / "road_reference_probe.json").write_text(json.dumps(doc, indent=2))
    print(table)
    print(f"\n{doc['wall_seconds']} s")


if __name__ == "__main__":
    main()
