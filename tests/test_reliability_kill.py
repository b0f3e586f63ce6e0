"""Kill -9 each long stage at a random point, rerun it with the same arguments: it resumes and ends
exactly where an uninterrupted run ends (weights equal on CPU; the teacher cache byte-identical).

pretrain's kill test lives in tests/test_train.py (test_kill_9_at_a_random_step_...); this module
covers adapt, distill and cache-teacher with the shared helpers of tests/faults/kill.py. The kill
moment is random (a random progress marker, then a random delay up to about one step), so over
many suite runs the kill lands before, during and after checkpoint and shard writes; the seed is
in the failure message.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from _distill_data import H, W, make_checkpoint, make_split
from dakd_core.cache import CacheConfig, run_cache
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.storage import open_store
from faults.kill import kill_after, mlflow_env, zygote  # noqa: F401  (zygote is a fixture)

ITERATIONS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    store = tmp_path_factory.mktemp("killstore").as_uri()
    src = make_split(store, "src", "source", 4, seed=1)
    tgt = make_split(store, "tgt", "target", 4, seed=2, labelled=False)
    teacher = make_checkpoint(f"{store}/teacher.pt", seed=0)
    student = make_checkpoint(f"{store}/student.pt", seed=1)
    index = run_cache(CacheConfig(teacher=teacher, manifests=[src, tgt], store=store, name="base",
                                  size=(H, W), batch_size=4, device="cpu")).index_uri
    return {"store": store, "src": src, "tgt": tgt, "teacher": teacher, "student": student, "index": index}


def _flags(**fields) -> list[str]:
    argv = []
    for name, value in fields.items():
        argv.append("--" + name.replace("_", "-"))
        argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return argv


def _training_argv(stage: str, w: dict, out: str) -> list[str]:
    fields = dict(model="deeplabv2_tiny", source_manifest=w["src"], target_manifest=w["tgt"], init=w["student"],
                  out=out, crop=(H, W), source_resize=(H, W), target_resize=(H, W), batch_size=2,
                  num_workers=0, iterations=ITERATIONS, checkpoint_every=1, log_every=1, lr=0.01,
                  device="cpu", lambda_adv_main=0.1, lambda_adv_aux=0.02)
    if stage == "distill":
        fields.update(teacher=w["teacher"], teacher_cache=w["index"], paradigm="c")
    return [stage, *_flags(**fields)]


def _env(tmp_path: Path, name: str, template_db: str) -> dict:
    # One MLflow database per run (the runs must not contend for one sqlite file).
    return mlflow_env(tmp_path, name, template_db)


def _kill_rerun_and_compare(zygote, tmp_path, template_db, argv_for, marker_for, step_seconds: float):
    """Run uninterrupted and killed copies side by side, kill one at a random point, rerun it.
    Returns (uninterrupted out dir, resumed out dir, description of the kill)."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    full, killed = tmp_path / "full", tmp_path / "killed"
    marker = rng.randint(1, 2)
    delay = rng.uniform(0, step_seconds)
    what = f"killed after marker {marker} + {delay:.3f}s (seed {seed})"

    full_pid = zygote.spawn(argv_for(full), tmp_path / "full.log", _env(tmp_path, "full", template_db))
    pid = zygote.spawn(argv_for(killed), tmp_path / "killed.log", _env(tmp_path, "killed", template_db))
    interrupted = kill_after(pid, lambda: marker_for(killed, marker), delay)
    status = zygote.wait(pid)
    assert interrupted and status == -9, f"{what}: run ended with {status} before the kill\n" + (tmp_path / "killed.log").read_text()[-3000:]
    assert zygote.wait(full_pid) == 0, (tmp_path / "full.log").read_text()[-3000:]

    rerun = zygote.run(argv_for(killed), tmp_path / "rerun.log", _env(tmp_path, "killed", template_db))
    assert rerun == 0, f"{what}\n" + (tmp_path / "rerun.log").read_text()[-3000:]
    return full, killed, what


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", ["adapt", "distill"])
def test_kill_9_training_stage_then_rerun_matches_uninterrupted(zygote, world, tmp_path, _mlflow_template_db, stage):
    def marker(out: Path, k: int) -> bool:
        return (out / "checkpoints" / f"step_{k:07d}.pt").exists()

    full, killed, what = _kill_rerun_and_compare(
        zygote, tmp_path, _mlflow_template_db, lambda out: _training_argv(stage, world, out.as_uri()), marker, step_seconds=0.5)
    a, b = load_checkpoint((full / "last.pt").as_uri()), load_checkpoint((killed / "last.pt").as_uri())
    assert a["step"] == b["step"] == ITERATIONS, what
    assert _weights_equal(a["model"], b["model"]), what
    for level in ("main", "aux"):
        assert _weights_equal(a["discriminators"][level], b["discriminators"][level]), what
    assert (full / "result.json").exists() and (killed / "result.json").exists()


def test_kill_9_cache_teacher_then_rerun_gives_an_identical_cache(zygote, world, tmp_path, _mlflow_template_db):
    def argv(out: Path) -> list[str]:
        return ["cache-teacher", *_flags(teacher=world["teacher"], store=out.as_uri(), name="c", shard_size=1,
                                         batch_size=1, size=(H, W), dtype="uint8", device="cpu"),
                "--manifest", world["src"], "--manifest", world["tgt"]]

    def marker(out: Path, k: int) -> bool:
        return (out / "teacher_cache" / "c" / "shards" / f"shard_{k:05d}.parquet").exists()

    # One shard is one 64x32 image: a few milliseconds, so the random delay stays short.
    full, killed, what = _kill_rerun_and_compare(zygote, tmp_path, _mlflow_template_db, argv, marker, step_seconds=0.02)
    a, b = open_store(full.as_uri()).child("teacher_cache/c"), open_store(killed.as_uri()).child("teacher_cache/c")
    keys = a.list()
    assert "index.parquet" in keys and len([k for k in keys if k.endswith(".bin")]) == 8
    assert b.list() == keys, what
    for key in keys:
        assert a.get_bytes(key) == b.get_bytes(key), f"{key} differs; {what}"
