"""Every pipeline task function, called directly (no KFP): the chain of the pipeline on tiny
synthetic data (64x32 images, deeplabv2_tiny, a few iterations), each step asserting its outputs,
plus the error paths (stale pinned data, bad parameters)."""

from __future__ import annotations

import json

import pytest

from dakd_core.errors import ConfigError, DataError
from dakd_core.orchestration import pins
from dakd_core.storage import open_store, read_bytes, write_bytes

TRAIN = dict(network="deeplabv2_tiny", source_resize=[32, 64], crop=[32, 64], batch_size=2, iterations=2,
             lr=1e-3, eval_every=2, num_workers=0, seed=7)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Store, MLflow sqlite DB, synthetic data, tracking env (module scope: the chain is shared)."""
    import torch

    from dakd_core.data.synth import generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("components")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.setenv("DAKD_SYSTEM_METRICS", "0")
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    generate(root / "src", "source", 4, size=(64, 32), seed=1, split="train", progress=False)
    generate(root / "tgt", "target", 4, size=(64, 32), seed=1, split="train", progress=False)
    generate(root / "tgt", "target", 2, size=(64, 32), seed=1, split="val", progress=False)
    common = dict(store_uri=(root / "store").as_uri(), run_name="t1", experiment="dakd-test", kfp_run_id="job-1")
    yield {"root": root, "common": common, "results": {}}
    mp.undo()


def test_start_opens_parent_run_and_finish_closes_it(env):
    import mlflow

    from dakd_core.orchestration.tasks.start import finish_task, start_task

    out = start_task(run_name="", kfp_run_id="job-1", experiment="dakd-test", cache_shards=3)
    assert out["run_name"] == "kfp-job-1" and out["shards"] == [0, 1, 2]
    client = mlflow.MlflowClient()
    run = client.get_run(out["parent_run_id"])
    assert run.data.tags["dakd.kfp_run_id"] == "job-1" and run.info.status == "RUNNING"
    assert finish_task(kfp_run_id="job-1", experiment="dakd-test", state="FAILED") == out["parent_run_id"]
    assert client.get_run(out["parent_run_id"]).info.status == "FAILED"
    env["results"]["parent"] = out["parent_run_id"]


def test_ingest_pins_manifests_and_target_train_is_unlabelled(env):
    from dakd_core.data.manifest import read_manifest
    from dakd_core.orchestration.tasks.ingest import ingest_task

    c, root = env["common"], env["root"]
    src = ingest_task(**c, fmt="gta5", root_uri=str(root / "src"), domain="source", splits=["train"], workers=1)
    tgt = ingest_task(**c, fmt="cityscapes", root_uri=(root / "tgt").as_uri(), domain="target",
                      splits=["train", "val"], workers=1)
    assert src["num_samples"] == {"train": 4} and src["val_manifest"] == ""
    assert tgt["num_samples"] == {"train": 4, "val": 2}
    uri, digest = pins.split(tgt["train_manifest"])
    assert len(digest) == 64 and pins.sha256_of(uri) == digest
    assert all(r["label_uri"] is None for r in read_manifest(uri))  # no target labels reach training
    assert all(r["label_uri"] for r in read_manifest(pins.resolve(tgt["val_manifest"])))
    # timings recorded for `dakd run`'s overhead report
    assert json.loads(read_bytes(f"{c['store_uri']}/runs/t1/timings/ingest.json"))["seconds"] > 0
    env["results"].update(src=src["train_manifest"], tgt=tgt["train_manifest"], val=tgt["val_manifest"])


def test_ingest_rejects_bad_parameters(env):
    from dakd_core.orchestration.tasks.ingest import ingest_task

    with pytest.raises(ConfigError, match="domain"):
        ingest_task(**env["common"], fmt="gta5", root_uri="/x", domain="both", splits=["train"])
    with pytest.raises(ConfigError, match="splits"):
        ingest_task(**env["common"], fmt="gta5", root_uri="/x", domain="source", splits=["test"])
    with pytest.raises(ConfigError, match="field 'target_uri': gs://b/raw"):
        ingest_task(**env["common"], fmt="gta5", root_uri="gs://b/raw", domain="target", splits=["train"])


def test_pretrain_and_adapt(env):
    from dakd_core.models.checkpoint import load_checkpoint
    from dakd_core.orchestration.tasks.adapt import adapt_task
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    c, r = env["common"], env["results"]
    pre = pretrain_task(**c, role="student", source_manifest=r["src"], **TRAIN)
    uri = pins.resolve(pre["checkpoint"])
    assert uri.startswith(f"{c['store_uri']}/runs/t1/pretrain_student/")
    assert load_checkpoint(uri)["model_name"] == "deeplabv2_tiny"
    ada = adapt_task(**c, role="student", init=pre["checkpoint"], target_manifest=r["tgt"], target_resize=[32, 64],
                     method="adaptsegnet", lambda_adv_main=1e-3, lambda_adv_aux=2e-4, discriminator_width=16,
                     source_manifest=r["src"], **TRAIN)
    assert "/runs/t1/adapt_student/" in pins.resolve(ada["checkpoint"])
    assert load_checkpoint(pins.resolve(ada["checkpoint"]))["config"]["d_ndf"] == 16
    r.update(pre=pre["checkpoint"], ada=ada["checkpoint"])


def test_cache_shards_then_index(env):
    from dakd_core.orchestration.tasks.cache_teacher import cache_index_task, cache_shard_task

    c, r = env["common"], env["results"]
    # the distill task's resizes (test_distill_c_then_d), as the pipeline wires them
    inputs = dict(teacher=r["ada"], manifests=[r["src"], r["tgt"]], num_shards=2,
                  source_resize=TRAIN["source_resize"], target_resize=[32, 64])
    counts = [cache_shard_task(**c, shard_index=k, **inputs)["num_samples"] for k in range(2)]
    assert sum(counts) == 8
    index = cache_index_task(**c, shard_samples=[float(n) for n in counts], **inputs)  # Collected: floats
    assert index["num_samples"] == 8 and pins.resolve(index["index"]).endswith("index.parquet")
    r["index"] = index["index"]


def test_cache_runs_the_teacher_at_each_domains_training_resize(env):
    """Sizes unlike the stored 32x64 images: each manifest's teacher maps come out at its own resize
    (labels at the resize, probabilities at stride 8 of it), and distillation refuses a cache made at
    another size than it trains at."""
    import io

    import pyarrow.parquet as pq

    from dakd_core.cache import TeacherCache
    from dakd_core.data.manifest import read_manifest
    from dakd_core.orchestration.tasks.cache_teacher import cache_index_task, cache_shard_task

    c, r = {**env["common"], "run_name": "sized"}, env["results"]
    inputs = dict(teacher=r["ada"], manifests=[r["src"], r["tgt"]], num_shards=1,
                  source_resize=[16, 48], target_resize=["24", 40.0])  # KFP may pass strings/floats
    n = cache_shard_task(**c, shard_index=0, **inputs)["num_samples"]
    index = pins.resolve(cache_index_task(**c, shard_samples=[float(n)], **inputs)["index"])
    rows = pq.read_table(io.BytesIO(read_bytes(index))).to_pylist()
    shapes = {(row["domain"], tuple(row["label_shape"]), tuple(row["main_shape"])) for row in rows}
    assert shapes == {("source", (16, 48), (19, 2, 6)), ("target", (24, 40), (19, 3, 5))}
    cache = TeacherCache(index)
    src = pins.resolve(r["src"])
    cache.check(None, read_manifest(src), src, resize=(16, 48))
    with pytest.raises(DataError, match="at 16x48 .* trained at 32x64"):
        cache.check(None, read_manifest(src), src, resize=(32, 64))


def test_distill_c_then_d(env):
    from dakd_core.models.checkpoint import load_checkpoint
    from dakd_core.orchestration.tasks.distill import distill_task, stage_paradigm

    c, r = env["common"], env["results"]
    args = dict(teacher=r["ada"], cache_index=r["index"], source_manifest=r["src"], target_manifest=r["tgt"],
                target_resize=[32, 64], method="adaptsegnet", lambda_adv_main=1e-3, lambda_adv_aux=2e-4,
                lambda_kl=0.1, lambda_kl_aux=0.01, lambda_mse=0.01, lambda_pseudo=1.0, lambda_target=1.0,
                temperature=1.0, **TRAIN)
    first = distill_task(**c, paradigm="d", stage="first", init=r["ada"], **args)
    assert first["paradigm"] == "c"
    second = distill_task(**c, paradigm="d", stage="second", init=first["checkpoint"], **args)
    assert second["paradigm"] == "d"
    assert load_checkpoint(pins.resolve(second["checkpoint"]))["config"]["paradigm"] == "d"
    assert stage_paradigm("b", "first") == "b"
    with pytest.raises(ConfigError, match="second stage exists only for d"):
        stage_paradigm("c", "second")
    r["dist"] = second["checkpoint"]


def test_export_evaluate_register_promote(env):
    from dakd_core.orchestration.tasks.evaluate import ROWS, evaluate_task
    from dakd_core.orchestration.tasks.export import export_task
    from dakd_core.orchestration.tasks.register import promote_task, register_task

    c, r = env["common"], env["results"]
    exp = export_task(**c, checkpoint=r["dist"], val_manifest=r["val"], resolution=[32, 64])
    assert exp["onnx_fp16"].endswith(".onnx") and len(exp["onnx_fp16_sha256"]) == 64
    onnx = f"{exp['onnx_fp16']}#sha256={exp['onnx_fp16_sha256']}"
    uris = [r["pre"], r["ada"], r["pre"], r["ada"], r["dist"], onnx]
    ev = evaluate_task(**c, models=dict(zip(ROWS, uris)), val_manifest=r["val"], resolution=[32, 64])
    assert set(ev["miou"]) == set(ROWS) and all(0 <= v <= 1 for v in ev["miou"].values())
    assert "student distilled" in ev["report"]
    reg = register_task(**c, export_record=exp["record"], metrics=ev["metrics"], source="gta5",
                        target="cityscapes", name="", paradigm="d", teacher="deeplabv2_tiny")
    assert reg["name"] == "dakd-gta5-to-cityscapes" and reg["version"] == "1"
    out = promote_task(**c, name=reg["name"], version=reg["version"])
    assert out["decision"] == "promoted"
    import mlflow

    champion = mlflow.MlflowClient().get_model_version_by_alias(reg["name"], "champion")
    assert str(champion.version) == "1" and champion.tags["pipeline_run_id"] == "job-1"
    saved = json.loads(read_bytes(f"{c['store_uri']}/runs/t1/promote/outcome.json"))
    assert saved["decision"] == "promoted"


def test_stale_pinned_object_is_refused(tmp_path):
    uri = (tmp_path / "m.parquet").as_uri()
    write_bytes(uri, b"v1")
    pinned = pins.pin(uri)
    assert pins.resolve(pinned) == uri
    write_bytes(uri, b"v2")
    with pytest.raises(DataError, match="changed after it was published"):
        pins.resolve(pinned)
    assert pins.resolve(uri) == uri  # unpinned URIs pass through
    with pytest.raises(DataError, match="already pinned"):
        pins.pin(pinned)
    assert open_store(tmp_path.as_uri()).exists("m.parquet")
