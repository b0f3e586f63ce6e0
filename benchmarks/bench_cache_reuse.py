"""Stage reuse across two pipeline runs that differ only in `paradigm` (issue 14, item 4).

Calls the pipeline's cached stage tasks as their components do (settings from the same plan
`start` builds, pinned inputs, content-addressed outputs), in one process: run 1 with paradigm d,
run 2 with paradigm b. Run 2's pretrain, adapt and teacher-cache calls find their finished
outputs (same settings, same pinned inputs -> same folder) and return the same pinned URIs; only
distill (b) trains. Prints seconds per stage call of both runs and the totals.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_cache_reuse.py [--iterations 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="iterations of every training stage")
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="dakd-reuse-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    os.environ.setdefault("DAKD_SYSTEM_METRICS", "0")
    os.environ.setdefault("DAKD_NO_PROGRESS", "1")

    from dakd_core.data.synth import generate
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan
    from dakd_core.orchestration.tasks.adapt import adapt_task
    from dakd_core.orchestration.tasks.cache_teacher import cache_index_task, cache_shard_task
    from dakd_core.orchestration.tasks.distill import distill_task
    from dakd_core.orchestration.tasks.ingest import ingest_task
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    generate(root / "src", "source", 8, size=(64, 32), seed=1, split="train", progress=False)
    generate(root / "tgt", "target", 8, size=(64, 32), seed=1, split="train", progress=False)
    store = (root / "store").as_uri()
    run = dict(store_uri=store, run_name="bench", kfp_run_id="bench")
    src = ingest_task(**run, fmt="gta5", root_uri=str(root / "src"), domain="source", splits=["train"],
                      workers=1)["train_manifest"]
    tgt = ingest_task(**run, fmt="cityscapes", root_uri=str(root / "tgt"), domain="target", splits=["train"],
                      workers=1)["train_manifest"]
    n = args.iterations
    base = dict(teacher_model="deeplabv2_tiny", student_model="swiftnet_tiny", train_source_resize_h=32,
                train_source_resize_w=64, train_target_resize_h=32, train_target_resize_w=64, train_crop_h=32, train_crop_w=64,
                pretrain_iterations=n, adapt_iterations=n, distill_iterations=n, teacher_batch_size=2,
                student_batch_size=2, train_eval_every=n, train_num_workers=0, train_seed=7, adapt_discriminator_width=16)
    stage = dict(store_uri=store, experiment="dakd-reuse")
    # not timed: the imports and the MLflow database's creation, which only the first call would pay
    import dakd_core.cache, dakd_core.train.adapt, dakd_core.train.distill, dakd_core.train.pretrain  # noqa: E401,F401
    from dakd_core.tracking import ensure_experiment

    os.environ["MLFLOW_EXPERIMENT_NAME"] = stage["experiment"]
    ensure_experiment()

    def one_run(paradigm: str) -> dict[str, tuple[float, str]]:
        plan = {k: json.dumps(v, sort_keys=True) for k, v in build_plan(PipelineParams(**base, distill_paradigm=paradigm)).items()}
        calls: dict[str, tuple[float, str]] = {}

        def timed(name, fn, **kw):
            t0 = time.perf_counter()
            out = fn(**stage, **kw)
            calls[name] = (time.perf_counter() - t0, out.get("checkpoint") or out.get("index") or "")
            return calls[name][1]

        pre = {r: timed(f"pretrain {r}", pretrain_task, role=r, config=plan[f"pretrain_{r}"], source_manifest=src)
               for r in ("teacher", "student")}
        ada = {r: timed(f"adapt {r}", adapt_task, role=r, config=plan[f"adapt_{r}"], init=pre[r],
                        source_manifest=src, target_manifest=tgt) for r in ("teacher", "student")}
        cache = dict(teacher=ada["teacher"], manifests=[src, tgt], num_shards=2)
        for k in range(2):
            timed(f"cache shard {k}", cache_shard_task, shard_index=k, **cache)
        index = timed("cache index", cache_index_task, shard_samples=[0.0, 0.0], **cache)
        inputs = dict(teacher=ada["teacher"], cache_index=index, source_manifest=src, target_manifest=tgt)
        first = timed("distill first", distill_task, config=plan["distill_first"], init=ada["student"], **inputs)
        if plan["distill_second"] != "{}":
            timed("distill second", distill_task, config=plan["distill_second"], init=first, **inputs)
        return calls

    runs = {"d": one_run("d"), "b": one_run("b")}
    print(f"{'stage call':<16} {'run 1 (d) s':>12} {'run 2 (b) s':>12}  same output")
    for name in [*runs["d"], *(k for k in runs["b"] if k not in runs["d"])]:
        d, b = runs["d"].get(name), runs["b"].get(name)
        same = "yes" if d and b and d[1] == b[1] else "-"
        print(f"{name:<16} {d[0] if d else float('nan'):>12.1f} {b[0] if b else float('nan'):>12.1f}  {same}")
    total = {k: sum(s for s, _ in v.values()) for k, v in runs.items()}
    print(f"{'total':<16} {total['d']:>12.1f} {total['b']:>12.1f}")


if __name__ == "__main__":
    main()
