"""Target mIoU against the strength of the appearance shift (`dakd synth --shift`): source-only,
AdaptSegNet-adapted and oracle (trained on labelled target images), through the real dakd stages.

For each shift: synth + ingest the pair (the `results` preset's sizes), pretrain the network on
the source, adapt it (output-space adversarial, the preset's weights), and train the same network
on the labelled target train split (the oracle); evaluate all three on the target **tune** split
(a choice of setting never reads val, whose mIoU is reported). The default shift of `dakd synth` is
chosen from this curve: where source-only sits well below the oracle and adaptation closes a clear
part of the gap. (Shift 0.45 was chosen when this script still scored val: docs/results.md says so.)

    python benchmarks/shift_curve.py --out .dakd/shift_curve --shifts 0.3,0.45,0.6,0.8,1.0 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path


def measure_shift(shift: float, out: str, model: str, seed: int, it_pretrain: int, it_adapt: int,
                  target_layout: str = "source") -> dict:
    """{"shift", "source_only", "adapted", "oracle"} target-tune mIoU (%) for one shift."""
    import torch

    torch.set_num_threads(1)
    work = Path(out) / f"shift_{shift:g}_{target_layout}"
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work.resolve()}/mlruns.db"
    os.environ.setdefault("DAKD_NO_PROGRESS", "1")
    from dakd_core.bench.results import PRESETS, _train, prepare_data
    from dakd_core.data.dataset import ManifestDataset
    from dakd_core.models.checkpoint import load_model
    from dakd_core.train import adapt, pretrain
    from dakd_core.train.configs import AdaptConfig, PretrainConfig
    from dakd_core.train.engine import evaluate_miou

    preset = replace(PRESETS["results"], shift=shift, target_layout=target_layout, n_weather=0)
    store = (work / "store").resolve().as_uri()
    manifests = prepare_data(preset, work, store)
    hw = (preset.height, preset.width)
    common = dict(source_resize=hw, crop=hw, select_resize=hw, batch_size=preset.batch_size, num_workers=0,
                  lr=preset.lr, seed=seed, eval_every=10**6, checkpoint_every=10**6, log_every=100, model=model,
                  iterations=it_pretrain)
    runs = f"{store}/runs/seed{seed}_{model}"
    source_only = _train(pretrain, PretrainConfig(**common, source_manifest=manifests["source"],
                                                  out=f"{runs}/pretrain"))
    oracle = _train(pretrain, PretrainConfig(**common, source_manifest=manifests["target_labelled"],
                                             out=f"{runs}/oracle"))
    adapted = _train(adapt, AdaptConfig(
        **dict(common, iterations=it_adapt), source_manifest=manifests["source"], init=source_only,
        target_manifest=manifests["target"], target_resize=hw, d_ndf=preset.d_ndf,
        lambda_adv_main=preset.lambda_adv_main, lambda_adv_aux=preset.lambda_adv_aux, out=f"{runs}/adapt"))
    tune = ManifestDataset(manifests["tune"], train=False, with_labels=True, resize=hw)

    def score(uri: str) -> float:
        net, _ = load_model(uri)
        return round(100 * evaluate_miou(net, tune, 19, torch.device("cpu"), False), 2)

    return {"shift": shift, "target_layout": target_layout, "seed": seed, "model": model,
            "source_only": score(source_only), "adapted": score(adapted), "oracle": score(oracle)}


def markdown(rows: list[dict]) -> str:
    lines = ["| shift | layout | source-only | adapted | oracle | gap closed by adaptation |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        gap = r["oracle"] - r["source_only"]
        closed = f"{100 * (r['adapted'] - r['source_only']) / gap:.0f} %" if gap > 0 else "–"
        lines.append(f"| {r['shift']:g} | {r['target_layout']} | {r['source_only']:.1f} | {r['adapted']:.1f} | "
                     f"{r['oracle']:.1f} | {closed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".dakd/shift_curve")
    p.add_argument("--shifts", default="0.3,0.45,0.6,0.8,1.0")
    p.add_argument("--camera-layout", action="store_true", help="also the camera layout (label shift) at shift 1")
    p.add_argument("--model", default="swiftnet_tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--it-pretrain", type=int, default=800)
    p.add_argument("--it-adapt", type=int, default=400)
    p.add_argument("--jobs", type=int, default=1, help="shifts measured in parallel processes")
    p.add_argument("--json", help="write the rows here too")
    args = p.parse_args(argv)
    jobs = [(float(s), "source") for s in args.shifts.split(",")]
    if args.camera_layout:
        jobs.append((1.0, "camera"))
    run = [(s, args.out, args.model, args.seed, args.it_pretrain, args.it_adapt, layout) for s, layout in jobs]
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            rows = list(pool.map(measure_shift, *zip(*run)))
    else:
        rows = [measure_shift(*r) for r in run]
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
