"""Preset choices of `dakd bench results`, measured on the target TUNE split (never val), one seed
outside the reported 0-2:

- `distill`: paradigm (c) at several distillation budgets and lambda_target values, and (b), from
  the seed's adapted teacher and student (the bench's own stages, reused when already trained);
- `sfda`: source-free SFDA from the seed's source-only student at several segmenter / generator /
  discriminator learning rates;
- `distill-field`: paradigms (b) and (c) at several values of one DistillConfig field, e.g. the
  distillation lr (the student restarts from its adapted checkpoint with a fresh optimiser, so the
  networks' lr 1e-2 re-warms it) or the pseudo-label confidence threshold;
- `teacher`: the teacher network's pretraining budget (`it_pretrain`, which the student network's
  rows do not use): the teacher retrained and re-adapted under a variant store, then (b) and (c)
  from it, against the seed's adapted student (trained once, reused);
- `dscale`: the discriminators' input size (AdaptConfig.d_input_scale: 1 = AdaptSegNet's image size,
  0.5 = the CPU networks' stride-2 logit grid): teacher and student adapted, then paradigm (c), from
  one pair of source-only networks, with each variant's seconds per adaptation / distillation step;
- `realtime`: the real-time student's budgets: source-only pretraining (`it_pretrain_realtime`) and
  its DAKD (c) distillation (`it_distill_realtime`), each pair from the seed's adapted teacher.

    python benchmarks/tune_choices.py distill --out .dakd/tune --seed 10 --budgets 150,250
    python benchmarks/tune_choices.py distill-field --out .dakd/tune --seed 10 --field lr --values 0.01,0.003
    python benchmarks/tune_choices.py sfda --out .dakd/tune --seed 10 --iterations 100
    python benchmarks/tune_choices.py dscale --out .dakd/tune --seed 10 --scales 1,0.5
    python benchmarks/tune_choices.py teacher --out .dakd/tune --seed 10 --values 1600 --under dscale0.5
    python benchmarks/tune_choices.py realtime --out .dakd/tune --seed 10 --values 600,800 --budgets 75,100 --under dscale0.5

Prints {row: tune mIoU (%)} and writes it to OUT/tune_<what>_seed<seed>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

SFDA_VARIANTS = {
    "paper": {},  # the networks' lr, G and D at the paper's Adam lr 0.1
    "seg_lr_1e-3": {"lr": 1e-3},
    "gd_lr_1e-3": {"sfda_g_lr": 1e-3, "sfda_d_lr": 1e-3},
}


# the rows every distillation variant is read against (trained once per seed, then reused)
ADAPTED_PAIR = ("teacher_source_only", "student_source_only", "teacher_adapted", "student_adapted")


def _setup(out: Path, size: str, under: str = ""):
    from dakd_core.bench import results as R

    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out.resolve()}/mlruns.db")
    store = (out.resolve() / "store").as_uri()
    preset = R.PRESETS[size]
    cached = out / "manifests.json"
    if cached.exists():
        manifests = json.loads(cached.read_text())
    else:
        manifests = R.prepare_data(preset, out, store)
        cached.write_text(json.dumps(manifests))
    # UNDER (e.g. dscale0.5): train under OUT/store/UNDER, reusing the stages another run left there
    return R, preset, f"{store}/{under}" if under else store, manifests


def _tune_miou(preset, manifests, uris: dict[str, str]) -> dict[str, float]:
    import torch

    from dakd_core.data.dataset import ManifestDataset
    from dakd_core.models.checkpoint import load_model
    from dakd_core.train.engine import evaluate_miou

    tune = ManifestDataset(manifests["tune"], train=False, with_labels=True, resize=(preset.height, preset.width))
    return {k: round(100 * evaluate_miou(load_model(u)[0], tune, 19, torch.device("cpu"), False), 2)
            for k, u in uris.items()}


def tune_distill(out: Path, size: str, seed: int, budgets: list[int], lambdas: list[float]) -> dict[str, float]:
    R, preset, store, manifests = _setup(out, size)
    base = [r for r in R.ROWS if r.key in ADAPTED_PAIR]
    ckpt: dict[str, str] = {}
    for its in budgets:
        rows = base + [R.Row(f"c{its}_lt{lt:g}", "paradigm", "", {"paradigm": "c", "lambda_target": lt})
                       for lt in lambdas]
        rows.append(R.Row(f"b{its}", "paradigm", "", {"paradigm": "b"}))
        ckpt.update(R.run_seed(dataclasses.replace(preset, it_distill=its), seed, manifests, store, "cpu", rows))
    return _tune_miou(preset, manifests, ckpt)


def tune_distill_field(out: Path, size: str, seed: int, field: str, values: list[int | float],
                       under: str) -> dict[str, float]:
    R, preset, store, manifests = _setup(out, size, under)
    rows = [r for r in R.ROWS if r.key in ADAPTED_PAIR]
    rows += [R.Row(f"{par}_{field}{v:g}", "paradigm", "", {"paradigm": par, field: v}) for v in values for par in "bc"]
    return _tune_miou(preset, manifests, R.run_seed(preset, seed, manifests, store, "cpu", rows))


def tune_sfda(out: Path, size: str, seed: int, iterations: int, variants: list[str], under: str) -> dict[str, float]:
    R, preset, store, manifests = _setup(out, size, under)
    from dakd_core.train import adapt
    from dakd_core.train.configs import AdaptConfig

    rows = [r for r in R.ROWS if r.key in ("teacher_source_only", "student_source_only")]
    init = R.run_seed(preset, seed, manifests, store, "cpu", rows)["student_source_only"]
    hw = (preset.height, preset.width)
    uris = {"source_only": init}
    outs = {name: f"{store}/runs/seed{seed}/sfda_{name}_{iterations}" for name in variants}
    for name in variants:
        fields = dict(
            select_manifest=manifests["tune"], target_manifest=manifests["target"], source_manifest=None, crop=hw,
            target_resize=hw, select_resize=hw, batch_size=preset.batch_size, num_workers=0, lr=preset.lr,
            seed=seed, device="cpu", eval_every=max(1, iterations // 2), checkpoint_every=10**6,
            log_every=iterations, d_ndf=preset.d_ndf, model=preset.student, iterations=iterations, init=init,
            method="sfda", out=outs[name])
        uris[name] = R._train(adapt, AdaptConfig(**(fields | SFDA_VARIANTS[name])))
    res = _tune_miou(preset, manifests, uris)
    for name in variants:
        metrics = R.stage_result(outs[name])["metrics"]
        res[f"s_per_step/{name}"] = round(1 / metrics["steps_per_second"], 3)
    return res


def tune_teacher(out: Path, size: str, seed: int, budgets: list[int], under: str) -> dict[str, float]:
    R, preset, store, manifests = _setup(out, size, under)
    base_rows = [r for r in R.ROWS if r.key in ADAPTED_PAIR]
    base = R.run_seed(preset, seed, manifests, store, "cpu", base_rows)
    res = _tune_miou(preset, manifests, base)
    given = {k: base[k] for k in ("student_source_only", "student_adapted")}
    rows = base_rows + [r for r in R.ROWS if r.key in ("paradigm_b", "paradigm_c")]
    for its in budgets:
        ckpt = R.run_seed(dataclasses.replace(preset, it_pretrain=its), seed, manifests, f"{store}/teacher{its}",
                          "cpu", rows, given=given)
        res.update({f"{k}@teacher{its}": v for k, v in _tune_miou(preset, manifests, ckpt).items() if k not in given})
    return res


def tune_realtime(out: Path, size: str, seed: int, pretrain: list[int], distill: list[int],
                  under: str) -> dict[str, float]:
    R, preset, store, manifests = _setup(out, size, under)
    base_rows = [r for r in R.ROWS if r.key in ADAPTED_PAIR]
    adapted = R.run_seed(preset, seed, manifests, store, "cpu", base_rows)  # the adapted teacher, trained once
    res: dict[str, float] = {}
    for p_its in pretrain:
        source_only = [r for r in R.ROWS if r.key == "rt_source_only"]
        given = R.run_seed(dataclasses.replace(preset, it_pretrain_realtime=p_its), seed, manifests,
                           f"{store}/rt{p_its}", "cpu", base_rows + source_only, given=adapted)
        res[f"rt_source_only@pretrain{p_its}"] = _tune_miou(preset, manifests, {"rt_source_only": given["rt_source_only"]})["rt_source_only"]
        for d_its in distill:  # each budget in a store of its own, from the same source-only network
            rows = base_rows + [r for r in R.ROWS if r.key == "rt_dakd"]
            ckpt = R.run_seed(dataclasses.replace(preset, it_distill_realtime=d_its), seed, manifests,
                              f"{store}/rt{p_its}_distill{d_its}", "cpu", rows, given=given)
            res[f"rt_dakd@pretrain{p_its}_distill{d_its}"] = _tune_miou(preset, manifests, {"rt_dakd": ckpt["rt_dakd"]})["rt_dakd"]
    return res


def tune_dscale(out: Path, size: str, seed: int, scales: list[float]) -> dict[str, float]:
    R, preset, store, manifests = _setup(out, size)
    source_only = ("teacher_source_only", "student_source_only")
    rows = [r for r in R.ROWS if r.key in source_only + ("teacher_adapted", "student_adapted", "paradigm_c")]
    res: dict[str, float] = {}
    given: dict[str, str] = {}  # the first variant trains the source-only pair, the others reuse it
    for scale in scales:
        variant = f"{store}/dscale{scale:g}"
        ckpt = R.run_seed(dataclasses.replace(preset, d_input_scale=scale), seed, manifests, variant, "cpu", rows,
                          given=given)
        given = {k: ckpt[k] for k in source_only}
        res.update({f"{k}@{scale:g}": v for k, v in _tune_miou(preset, manifests, ckpt).items()
                    if k not in given})
        for stage in ("adapt_teacher", "adapt_student", "distill_paradigm_c"):
            metrics = R.stage_result(f"{variant}/runs/seed{seed}/{stage}")["metrics"]
            res[f"s_per_step/{stage}@{scale:g}"] = round(1 / metrics["steps_per_second"], 3)
    res.update(_tune_miou(preset, manifests, given))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("distill", "distill-field", "sfda", "dscale", "teacher", "realtime"))
    p.add_argument("--out", default=".dakd/tune")
    p.add_argument("--size", default="results")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budgets", default="150,250", help="distill, realtime: distillation iterations")
    p.add_argument("--lambda-target", default="1,2,3", help="distill: lambda_target values of paradigm c")
    p.add_argument("--field", default="lr", help="distill-field: a DistillConfig field")
    p.add_argument("--values", default="0.01,0.003,0.001",
                   help="distill-field: the field's values; teacher, realtime: the network's pretraining iterations")
    p.add_argument("--under", default="", help="train under OUT/store/UNDER (reuse the stages another run left there)")
    p.add_argument("--iterations", type=int, default=100, help="sfda: adaptation iterations")
    p.add_argument("--variants", default=",".join(SFDA_VARIANTS), help="sfda: " + ", ".join(SFDA_VARIANTS))
    p.add_argument("--scales", default="1,0.5", help="dscale: discriminator input scales")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("DAKD_NO_PROGRESS", "1")
    out = Path(args.out)
    if args.what == "distill":
        res = tune_distill(out, args.size, args.seed, [int(b) for b in args.budgets.split(",")],
                           [float(x) for x in args.lambda_target.split(",")])
    elif args.what == "distill-field":
        res = tune_distill_field(out, args.size, args.seed, args.field,
                                 [int(x) if x.isdigit() else float(x) for x in args.values.split(",")],
                                 args.under)
    elif args.what == "teacher":
        res = tune_teacher(out, args.size, args.seed, [int(x) for x in args.values.split(",")], args.under)
    elif args.what == "realtime":
        res = tune_realtime(out, args.size, args.seed, [int(x) for x in args.values.split(",")],
                            [int(b) for b in args.budgets.split(",")], args.under)
    elif args.what == "dscale":
        res = tune_dscale(out, args.size, args.seed, [float(x) for x in args.scales.split(",")])
    else:
        unknown = set(args.variants.split(",")) - set(SFDA_VARIANTS)
        if unknown:
            p.error(f"--variants: unknown {', '.join(sorted(unknown))}")
        res = tune_sfda(out, args.size, args.seed, args.iterations, args.variants.split(","), args.under)
    print(json.dumps(res, indent=1))
    what = f"{args.what}_{args.field}" if args.what == "distill-field" else args.what
    (out / f"tune_{what}_seed{args.seed}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
