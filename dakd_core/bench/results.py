"""`dakd bench results`: DAKD's Table 1 reproduced in kind on the built-in synthetic domain pair.

One run = per seed: synth its own pair (source train; target train / tune / val, drawn with the
seed) -> ingest -> pretrain and adapt the teacher and the student once, the control rows, the
teacher recipe chosen on tune, one teacher cache, then every distillation row (paradigms a-d, the
ablations) from those shared stage outputs -> one evaluation of every row's tune-selected and last
checkpoint on the seed's target *val* split -> `results.json`, `results.md` and plots
(dakd_core/bench/report.py; the rows in dakd_core/bench/rows.py).

Every stage selects its best checkpoint on the target *tune* split (`select_manifest`); the teacher
that distils (`TEACHER_RECIPES`) and the reported DAKD paradigm (`chosen_paradigm`) are chosen on
that split's mIoU too. Which preset settings were chosen on which split: the comments below.

Every stage is skipped when its `result.json` exists for the identical config (same config hash),
so an interrupted run resumes where it stopped and rows share the stage outputs they have in common.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dakd_core.bench.report import best_on_tune
from dakd_core.bench.rows import (  # noqa: F401  (Row: read through this module by benchmarks/tune_choices.py)
    ADAPT_CONTROLS, CHECKPOINT_BN_ROWS, CONTINUED_CONTROLS, ROWS, SOURCE_VAL_ROWS, TEACHER_RECIPES, WEATHER_ROWS,
    Row, distils, select_rows,
)
from dakd_core.bench.slots import FifoSlots, compute_slot
from dakd_core.bench.slots import install as install_slots
from dakd_core.errors import ConfigError


@dataclass(frozen=True)
class ResultsPreset:
    """Data sizes, networks and budgets of one `--size`."""

    width: int
    height: int
    n_source: int
    n_target: int
    n_tune: int
    n_val: int
    teacher: str
    student: str
    it_pretrain: int
    it_adapt: int
    it_distill: int
    batch_size: int = 4
    lr: float = 0.01  # the segmenters' base lr (optimiser and schedule: the networks' recipes)
    lambda_adv_main: float = 1e-3  # AdaptSegNet's output-space weights (main, aux)
    lambda_adv_aux: float = 2e-4
    eval_every: int = 50
    pseudo_threshold: float = 0.0  # teacher confidence below it is ignored by L_pseudoT
    target_augment: bool = True  # random scale + flip on target crops during distillation
    gate_max_images: int = 16
    d_ndf: int = 64  # discriminator width (AdaptSegNet 64); narrower keeps D below the student's cost on CPU
    d_input_scale: float = 1.0  # maps resized to this fraction of the crop for the discriminators (AdaptConfig)
    n_weather: int = 0  # labelled images per condition of the weather target (per-condition evaluation)
    realtime_student: str = "swiftnet_mobilenetv4"  # the "realtime" rows' student (seed 004)
    it_distill_realtime: int | None = None  # the "realtime" rows' distillation budget; None: it_distill
    it_pretrain_realtime: int | None = None  # the real-time student's source-only pretraining; None: it_pretrain
    shift: float = 0.45  # target appearance shift (dakd synth --shift)
    # pretrain budget of the student network's rows (source-only, photometric, oracle); None: it_pretrain
    it_pretrain_student: int | None = None
    # SFDA's budget as a fraction of it_adapt: its step (generator + fixed model + patch D) costs ~4x
    # AdaptSegNet's on CPU
    sfda_budget: float = 1.0
    target_layout: str = "source"  # target scene geometry (dakd synth --target-layout)
    bn_source_images: int = 256  # the teacher cache's source statistics (CacheConfig; 0: the checkpoint's)


PRESETS = {
    # test smoke: seconds, numbers meaningless
    "tiny": ResultsPreset(64, 32, 6, 6, 4, 4, "deeplabv2_tiny", "deeplabv2_tiny", 2, 2, 2, batch_size=2,
                          eval_every=2, gate_max_images=2, d_ndf=8, n_weather=1),
    # a few minutes per seed on 2 CPU cores
    "demo": ResultsPreset(128, 64, 100, 100, 12, 24, "swiftnet_thin", "swiftnet_tiny", 300, 150, 100,
                          batch_size=8, eval_every=50, d_ndf=16, n_weather=4, lambda_adv_main=1e-2,
                          lambda_adv_aux=2e-3, d_input_scale=0.5),
    # the published table (docs/results.md), 3 seeds in 3 processes on 2 CPU cores: under an hour.
    # The CPU-scale pair decodes to stride 2 (at stride 8 the 16x8 logits of 128x64 inputs cap
    # mIoU near 50 %); AdamW + cosine at lr 1e-2 (their recipe); a 16-wide discriminator (at
    # AdaptSegNet's 64 the D costs more than the student's step on CPU). lambda_adv 10x
    # AdaptSegNet's: chosen on the tune split (docs/results.md, "Choosing the settings").
    # The student network gets 1600 pretrain iterations: at 800 it sits at 57 % on source val (not
    # converged on its own domain, which inflates every adaptation gain), at 1600 at 65 %
    # (benchmarks/bare_loop.py, docs/learning.md).
    # Distillation 200 iterations per student row: on the tune split (seeds 10 / 11, from adapted
    # students at 47.82 / 47.35) (c) scored 46.56 / 46.51 at 150, 47.36 / 47.06 at 200 and 47.38 /
    # 47.99 at 250, (b) 49.19 / 48.48, 49.92 / 48.77 and 49.74 / 48.98 (benchmarks/tune_choices.py
    # distill-field --field iterations). The real-time rows are compared with each other and get
    # smaller budgets: their distillation step takes 1.6-1.9x the student's (docs/results.md's
    # notes), and the 25 rows at the shared budgets took 60.5 minutes (over the bench's hour).
    # Pretraining 600 / 800 and distillation 75 / 100 iterations, tune split, seeds 10 / 11:
    # source-only 20.93 / 22.39 and 22.34 / 23.35; DAKD (c) 27.36 / 28.07 at (600, 75), 27.53 /
    # 28.20 at (800, 75), 26.60 / 28.61 at (600, 100), 28.58 / 28.68 at (800, 100)
    # (benchmarks/tune_choices.py realtime): (600, 75) costs about a point of the real-time rows
    # and saves about 97 s of stage time per seed.
    # The discriminators see the stride-2 logits as they are (d_input_scale 0.5), not upsampled to
    # the crop: on tune (seeds 10, 11) the same mIoU within noise; on seed 10 the student's
    # adaptation step took 0.60x and distillation's 0.58x the time (benchmarks/tune_choices.py
    # dscale; docs/methods.md, "What the discriminators see").
    "results": ResultsPreset(128, 64, 300, 300, 24, 48, "swiftnet_thin", "swiftnet_tiny", 800, 400, 200,
                             batch_size=8, eval_every=100, d_ndf=16, n_weather=12, lambda_adv_main=1e-2,
                             lambda_adv_aux=2e-3, it_pretrain_student=1600, sfda_budget=0.25, d_input_scale=0.5,
                             it_distill_realtime=75, it_pretrain_realtime=600),
}


@dataclass
class ResultsRun:
    size: str
    seeds: int
    out: Path  # work directory: raw data, store, MLflow DB
    docs: Path  # receives results.md and img/results_*.png
    json_path: Path
    command: str = "dakd bench results"
    device: str = "cpu"
    jobs: int = 1  # seeds trained in parallel processes (one torch thread each when > 1)
    groups: tuple[str, ...] | None = None  # row groups to run (select_rows); None: every row


def stage_result(out_uri: str) -> dict | None:
    """The published `result.json` of the training stage at `out_uri`, or None if it has not finished."""
    from dakd_core.storage import open_store
    from dakd_core.train.engine import RESULT

    store = open_store(out_uri)
    return json.loads(store.get_bytes(RESULT)) if store.exists(RESULT) else None


def _done(out_uri: str, cfg) -> str | None:
    """The best checkpoint of a finished identical run under `out_uri`, else None."""
    from dakd_core.train.engine import config_hash

    doc = stage_result(out_uri)
    return doc["best_checkpoint_uri"] if doc and doc.get("config_hash") == config_hash(cfg) else None


def _train(module, cfg) -> str:
    """Run a training stage unless an identical run finished; returns its best checkpoint URI."""
    best = _done(cfg.out, cfg)
    if best is None:
        with compute_slot():
            best = module.run(cfg).best_checkpoint_uri
    return best


def data_dir(out: Path, data_seed: int) -> Path:
    """Where the raw pair of `data_seed` is rendered (seed 0: `out` itself, as before seeds drew data)."""
    return out if data_seed == 0 else out / f"data_seed{data_seed}"


def prepare_data(p: ResultsPreset, out: Path, store: str, data_seed: int = 0) -> dict[str, str]:
    """Synth + ingest the pair drawn with `data_seed`; returns manifest URIs {source, target, tune,
    val, ...}. Each data seed renders its own images and ingests them under its own dataset names."""
    from dakd_core.config import build_config
    from dakd_core.data.ingest import IngestConfig, run_ingest
    from dakd_core.data.synth import generate

    out = data_dir(out, data_seed)
    tag = "" if data_seed == 0 else f"_s{data_seed}"
    size = (p.width, p.height)
    generate(out / "raw_src", "source", p.n_source, size=size, seed=data_seed, split="train", progress=False)
    look = dict(shift=p.shift, target_layout=p.target_layout)
    for split, n in (("train", p.n_target), ("tune", p.n_tune), ("val", p.n_val)):
        generate(out / "raw_tgt", "target", n, size=size, seed=data_seed, split=split, progress=False, **look)
    jobs = {
        "source": dict(format="gta5", root=str(out / "raw_src"), split="all", domain="source", name=f"src{tag}"),
        "target": dict(format="cityscapes", root=str(out / "raw_tgt"), split="train", domain="target",
                       name=f"tgt{tag}", labels=False),
        "tune": dict(format="cityscapes", root=str(out / "raw_tgt"), split="tune", domain="target", name=f"tgt{tag}"),
        # the same target train images with their labels: only the oracle row reads them
        "target_labelled": dict(format="cityscapes", root=str(out / "raw_tgt"), split="train", domain="target",
                                name=f"tgt_labelled{tag}"),
        "val": dict(format="cityscapes", root=str(out / "raw_tgt"), split="val", domain="target", name=f"tgt{tag}"),
    }
    # held-out labelled source images: how well the source-only networks learned their own domain
    generate(out / "raw_src_val", "source", p.n_val, size=size, seed=data_seed, split="val", progress=False)
    jobs["source_val"] = dict(format="gta5", root=str(out / "raw_src_val"), split="all", domain="source",
                              name=f"src_val{tag}")
    if p.n_weather:  # the same camera world under fog / night / rain / snow (ACDC layout), labelled
        generate(out / "raw_weather", "target", p.n_weather, size=size, seed=data_seed, split="val", weather=True,
                 progress=False, **look)
        jobs["weather"] = dict(format="acdc", root=str(out / "raw_weather"), split="val", domain="target",
                               name=f"weather{tag}")
    return {k: run_ingest(build_config(IngestConfig, store=store, **v)).manifest_uri for k, v in jobs.items()}


def tune_miou(checkpoint_uri: str) -> float | None:
    """The target-tune mIoU its stage selected `checkpoint_uri` with (its result.json), or None."""
    doc = stage_result(checkpoint_uri.rsplit("/", 1)[0])
    return doc["metrics"].get("select/best_miou") if doc else None


def run_seed(p: ResultsPreset, seed: int, manifests: dict[str, str], store: str, device: str,
             rows=ROWS, given: dict[str, str] | None = None) -> dict[str, str]:
    """Train every row of one seed under STORE/runs/seed<seed>; returns {row key: checkpoint URI}
    (best on the tune split). Rows in `given` (key -> URI) are taken, not trained: variants of the
    later stages (each in its own store) can share one pair of source-only networks."""
    from dakd_core.cache import CacheConfig, run_cache
    from dakd_core.train import adapt, distill, pretrain
    from dakd_core.train.configs import AdaptConfig, PretrainConfig
    from dakd_core.train.distill import DistillConfig

    hw = (p.height, p.width)
    runs = f"{store}/runs/seed{seed}"
    common = dict(
        source_manifest=manifests["source"], select_manifest=manifests["tune"], source_resize=hw, crop=hw,
        select_resize=hw, batch_size=p.batch_size, num_workers=0, lr=p.lr, seed=seed, device=device,
        eval_every=p.eval_every, checkpoint_every=10**6, log_every=p.eval_every,
    )
    adapt_common = dict(common, target_manifest=manifests["target"], target_resize=hw, d_ndf=p.d_ndf,
                        lambda_adv_main=p.lambda_adv_main, lambda_adv_aux=p.lambda_adv_aux,
                        d_input_scale=p.d_input_scale)
    ckpt: dict[str, str] = dict(given or {})
    keys = {row.key for row in rows}
    by_key = {row.key: row for row in rows}
    nets = {"teacher": p.teacher, "student": p.student}
    it_student = p.it_pretrain_student or p.it_pretrain
    for role, its in (("teacher", p.it_pretrain), ("student", it_student)):
        if f"{role}_source_only" not in ckpt:
            ckpt[f"{role}_source_only"] = _train(pretrain, PretrainConfig(
                **common, model=nets[role], iterations=its, out=f"{runs}/pretrain_{role}"))
    if "student_photometric" in keys:
        ckpt["student_photometric"] = _train(pretrain, PretrainConfig(
            **common, model=p.student, iterations=it_student, photometric=True, out=f"{runs}/pretrain_photometric"))
    if "target_oracle" in keys:
        ckpt["target_oracle"] = _train(pretrain, PretrainConfig(
            **dict(common, source_manifest=manifests["target_labelled"]), model=p.student, iterations=it_student,
            out=f"{runs}/pretrain_oracle"))
    # the rows trained by distillation (and its no-teacher controls) need the adapted networks and
    # a teacher cache
    distilled = any(distils(row) for row in rows)
    continued = any(k.startswith("student_continued") for k in keys)
    for role in ("teacher", "student"):
        needed = distilled or f"{role}_adapted" in keys or (role == "student" and continued)
        if f"{role}_adapted" not in ckpt and needed:
            ckpt[f"{role}_adapted"] = _train(adapt, AdaptConfig(
                **adapt_common, model=nets[role], iterations=p.it_adapt, init=ckpt[f"{role}_source_only"],
                out=f"{runs}/adapt_{role}"))
    # the other adaptation methods and the control adaptations (photometric teacher recipe,
    # BatchNorm statistics alone): the adapt stage of the row's network ("teacher_..." /
    # "student_..."), budget and source-only init, with the row's overrides
    for row in rows:
        if row.group != "method" and row.key not in ADAPT_CONTROLS:
            continue
        role = row.key.split("_", 1)[0]
        fields = dict(adapt_common, model=nets[role], iterations=p.it_adapt, init=ckpt[f"{role}_source_only"],
                      out=f"{runs}/adapt_{row.key}", **row.overrides)
        if row.overrides.get("method") == "sfda":
            fields["source_manifest"] = None  # source-free: only the source-only checkpoint crosses over
            fields["iterations"] = max(1, round(p.it_adapt * p.sfda_budget))
        ckpt[row.key] = _train(adapt, AdaptConfig(**fields))
    distill_common = dict(
        adapt_common, model=p.student, iterations=p.it_distill, gate="warn", gate_max_images=p.gate_max_images,
        pseudo_threshold=p.pseudo_threshold, target_augment=p.target_augment,
    )
    if distilled:
        # the teacher that distils: of the teacher recipes this run trained, the best on tune
        teacher = best_on_tune({k: tune_miou(ckpt[k]) for k in TEACHER_RECIPES if k in ckpt})
        if teacher is None:
            raise ConfigError("no tune mIoU for any adapted teacher: every stage needs select_manifest")

        def teacher_cache(bn_source_images: int, suffix: str = "") -> str:
            with compute_slot():
                return run_cache(CacheConfig(
                    teacher=ckpt[teacher], manifests=[manifests["source"], manifests["target"]], store=store,
                    name=f"seed{seed}_{teacher}{suffix}", size=hw, device=device,
                    bn_source_images=bn_source_images)).index_uri

        distill_common.update(teacher=ckpt[teacher], teacher_cache=teacher_cache(p.bn_source_images))
        if keys & set(CHECKPOINT_BN_ROWS):
            checkpoint_bn_cache = teacher_cache(0, "_checkpoint_bn")
    def distill_fields(row: Row) -> dict:
        overrides = dict(row.overrides)
        return distill_common | {"iterations": p.it_distill * overrides.pop("budget", 1)} | overrides

    # "just train longer": no teacher, the distillation stage's schedule from the same init; the _d
    # controls continue from student_continued as (d) continues from (c)
    for key, init, _ in CONTINUED_CONTROLS:
        if key in keys:
            no_teacher = {"teacher": None, "teacher_cache": None}
            ckpt[key] = _train(distill, DistillConfig(**(distill_fields(by_key[key]) | no_teacher),
                                                      init=ckpt[init], out=f"{runs}/distill_{key}"))
    for row in rows:
        if row.group not in ("paradigm", "ablation"):
            continue
        # (d) continues from (c)'s selected checkpoint; every other row from the adapted student
        init = ckpt["paradigm_c"] if row.overrides.get("paradigm") == "d" else ckpt["student_adapted"]
        fields = distill_fields(row)
        if row.key in CHECKPOINT_BN_ROWS:
            fields["teacher_cache"] = checkpoint_bn_cache
        cfg = DistillConfig(**fields, init=init, out=f"{runs}/distill_{row.key}")
        ckpt[row.key] = _train(distill, cfg)
    for row in rows:
        if row.group != "realtime":
            continue
        if row.key == "rt_source_only":
            ckpt[row.key] = _train(pretrain, PretrainConfig(
                **common, model=p.realtime_student, iterations=p.it_pretrain_realtime or p.it_pretrain,
                out=f"{runs}/pretrain_rt"))
            continue
        # the live teacher replaces the cache (feature losses need its intermediate maps)
        fields = dict(distill_common, model=p.realtime_student, iterations=p.it_distill_realtime or p.it_distill,
                      **row.overrides)
        if fields.get("teacher_online"):
            fields["teacher_cache"] = None
        ckpt[row.key] = _train(distill, DistillConfig(
            **fields, init=ckpt["rt_source_only"], out=f"{runs}/distill_{row.key}"))
    return ckpt


def evaluate_seed(p: ResultsPreset, seed: int, ckpt: dict[str, str], manifests: dict[str, str], out: Path,
                  device: str) -> dict[str, dict]:
    """mIoU and per-class IoU of every row's checkpoint on target val (one `evaluate.run`), plus
    mIoU per weather condition of WEATHER_ROWS when the preset renders a weather target."""
    from dakd_core.evaluation.evaluate import EvalConfig, run

    # mIoU, per-class IoU and per-condition mIoU only: the report plots the means over seeds, and
    # per-model plots and calibration statistics more than doubled this step, which ends each seed
    # (25 models on target val, seed 0, 1 thread: 38.7 / 40.1 s with them, 18.3 / 19.9 s without;
    # benchmarks/bench_evaluate.py)
    def evaluate(keys, manifest, name, uris=ckpt):
        cfg = EvalConfig(models=[f"{k}={uris[k]}" for k in keys], manifest=manifest,
                         out=str(out / f"{name}_seed{seed}"), resolution=(p.height, p.width), device=device,
                         grid_samples=0, log_mlflow=False, figures=False, calibration=False)
        return run(cfg).metrics["models"]

    # every row twice: the checkpoint selected on tune, and the last one (no target labels used to
    # pick it at all); plus the tune mIoU that selected it (what the paradigm and teacher choices read)
    lasts = {f"{k}@last": last_checkpoint(uri) for k, uri in ckpt.items()}
    models = evaluate(list(ckpt) + list(lasts), manifests["val"], "eval", {**ckpt, **lasts})
    rows = {k: {"miou": m["miou"], "per_class_iou": m["per_class_iou"], "num_parameters": m["num_parameters"],
                "miou_last": models[f"{k}@last"]["miou"], "tune_miou": tune_miou(ckpt[k])}
            for k, m in models.items() if not k.endswith("@last")}
    if "source_val" in manifests:
        # the checkpoint the row reports (selected on the target tune split) and the network at the
        # end of its source training: the second says whether it learned its own domain
        keys = [k for k in SOURCE_VAL_ROWS if k in ckpt]
        uris = {**ckpt, **{f"{k}@last": last_checkpoint(ckpt[k]) for k in keys}}
        for k, m in evaluate(keys + [f"{k}@last" for k in keys], manifests["source_val"], "source_val", uris).items():
            row, _, last = k.partition("@")
            rows[row]["source_val_last_miou" if last else "source_val_miou"] = m["miou"]
    if "weather" in manifests:
        for k, m in evaluate([k for k in WEATHER_ROWS if k in ckpt], manifests["weather"], "weather").items():
            rows[k]["weather"] = {c: v["miou"] for c, v in m["per_condition"].items()}
    return rows


def last_checkpoint(best_uri: str) -> str:
    """The last checkpoint of the training stage whose best checkpoint is `best_uri` (its result.json)."""
    return stage_result(best_uri.rsplit("/", 1)[0])["last_checkpoint_uri"]


def seed_job(p: ResultsPreset, seed: int, store: str, out: Path, device: str,
             threads: int | None, rows=ROWS) -> tuple[dict[str, dict], dict[str, str]]:
    """Draw, train and evaluate one seed (a worker process when seeds run in parallel): seed i
    renders its own pair (data seed i) as well as initialising its networks with i. Returns the
    rows' metrics and the seed's manifests."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        # one SQLite MLflow DB per worker: concurrent writers would hit "database is locked"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out.resolve()}/mlruns_seed{seed}.db"
    with compute_slot():
        manifests = prepare_data(p, out, store, data_seed=seed)
    ckpt = run_seed(p, seed, manifests, store, device, rows)
    with compute_slot():
        return evaluate_seed(p, seed, ckpt, manifests, out, device), manifests


def run_results(run: ResultsRun) -> dict:
    """The whole benchmark; writes run.json_path, run.docs/results.md and plots; returns the document."""
    if run.size not in PRESETS:
        raise ConfigError(f"--size: '{run.size}' is not one of {', '.join(PRESETS)}")
    if run.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {run.seeds}")
    p = PRESETS[run.size]
    rows = select_rows(run.groups)
    run.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{run.out.resolve()}/mlruns.db")
    store = (run.out.resolve() / "store").as_uri()
    started = time.perf_counter()
    if run.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        workers = min(run.jobs, run.seeds)
        # no more stages compute at once than there are cores (dakd_core/bench/slots.py)
        cores = len(os.sched_getaffinity(0))
        slots = FifoSlots(cores, ctx) if workers > cores else None
        compute_slots = min(workers, cores)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=install_slots, initargs=(slots,)) as pool:
            futures = {s: pool.submit(seed_job, p, s, store, run.out, run.device, 1, rows)
                       for s in range(run.seeds)}
            done = {s: f.result() for s, f in futures.items()}
    else:
        done = {s: seed_job(p, s, store, run.out, run.device, None, rows) for s in range(run.seeds)}
        compute_slots = 1
    from dakd_core.bench.report import summarise, write_report

    per_seed = {s: metrics for s, (metrics, _) in done.items()}
    manifests = {s: m for s, (_, m) in done.items()}
    doc = summarise(per_seed, rows)
    # the pair of the first seed (every seed draws its own from the same distribution)
    doc["class_pixel_shares"] = {domain: class_pixel_shares(manifests[0][key])
                                 for domain, key in (("source", "source"), ("target", "target_labelled"))}
    doc.update(size=run.size, preset=asdict(p), seeds=list(range(run.seeds)), command=run.command,
               groups=sorted({r.group for r in rows}),
               data_seeds={str(s): s for s in range(run.seeds)},
               machine=machine_description(run.device), jobs=run.jobs, compute_slots=compute_slots,
               wall_seconds=round(time.perf_counter() - started, 1),
               val_manifests={str(s): m["val"] for s, m in manifests.items()},
               tune_manifests={str(s): m["tune"] for s, m in manifests.items()})
    # The JSON first, then the Markdown that cites it: a crash leaves no table without its data.
    run.json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False))
    tmp.replace(run.json_path)
    write_report(doc, run.docs, run.json_path)
    return doc


def class_pixel_shares(manifest_uri: str) -> dict[str, float]:
    """Fraction of the labelled pixels of each class over a manifest (ingest's per-sample counts)."""
    import numpy as np

    from dakd_core.data.manifest import read_manifest
    from dakd_core.labels import CLASS_NAMES

    total = np.sum([row["class_pixels"] for row in read_manifest(manifest_uri)], axis=0).astype(float)
    return dict(zip(CLASS_NAMES, (total / max(total.sum(), 1.0)).tolist()))


def machine_description(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU only)"
    return f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads; python {platform.python_version()}"
