"""Every pipeline task function, called directly (no KFP): the chain of the pipeline on tiny
synthetic data (64x32 images, deeplabv2_tiny, a few iterations), each step asserting its outputs,
plus the error paths (stale pinned data, bad parameters)."""

from __future__ import annotations

import json
import re

import pytest

from dakd_core.errors import ConfigError, DataError
from dakd_core.orchestration import pins
from dakd_core.storage import open_store, read_bytes, write_bytes

# The pipeline's parameters for a tiny run: the tasks get their settings from the plan `start`
# builds from them, as in the pipeline.
TINY = dict(teacher_model="deeplabv2_tiny", student_model="deeplabv2_tiny", train_source_resize_h=32,
            train_source_resize_w=64, train_target_resize_h=32, train_target_resize_w=64, train_crop_h=32,
            train_crop_w=64, pretrain_iterations=2, adapt_iterations=2, distill_iterations=2, teacher_batch_size=2,
            student_batch_size=2, train_eval_every=2, train_num_workers=0, train_seed=7, train_lr=1e-3,
            adapt_discriminator_width=16, eval_resize_h=32, eval_resize_w=64, mlflow_experiment="dakd-test",
            distill_paradigm="d")


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
    # what a cached stage task gets: no run name, no KFP run id, no parent run
    common = dict(store_uri=(root / "store").as_uri(), experiment="dakd-test")
    yield {"root": root, "common": common, "results": {}}
    mp.undo()


def test_start_checks_plans_opens_parent_run_and_finish_closes_it(env):
    import mlflow

    from dakd_core.orchestration.plan import STAGES
    from dakd_core.orchestration.tasks.start import finish_task, start_task

    root = env["root"]
    params = dict(TINY, data_source_uri=str(root / "src"), data_target_uri=(root / "tgt").as_uri(),
                  data_store_uri=env["common"]["store_uri"])  # start checks that the store takes a write
    # as KFP delivers a dict of parameters: every value as text, integers as floats
    delivered = {k: str(float(v)) if type(v) is int else str(v) for k, v in params.items()}
    # the run's name is KFP's run name as one store key segment, with the run id's start
    out = start_task(params=delivered, kfp_run_id="job-1", kfp_run_name="Run of dakd (gta5/c)")
    assert out["run_name"] == "Run-of-dakd-gta5-c-job-1" and set(out) == {"run_name", "parent_run_id", *STAGES}
    plan = {stage: json.loads(out[stage]) for stage in STAGES}
    assert plan["pretrain_teacher"]["iterations"] == 2 and plan["pretrain_teacher"]["crop"] == [32, 64]
    assert (plan["distill_first"]["paradigm"], plan["distill_second"]["paradigm"]) == ("c", "d")
    assert plan["adapt_student"]["d_ndf"] == 16 and plan["promote"] == {"min_gain": 0.001}
    client = mlflow.MlflowClient()
    run = client.get_run(out["parent_run_id"])
    assert run.data.tags["dakd.kfp_run_id"] == "job-1" and run.info.status == "RUNNING"
    assert run.data.params["train_crop_h"] == "32" and run.info.run_name == "pipeline-Run-of-dakd-gta5-c-job-1"
    assert (run.data.tags["dakd.paradigm"], run.data.tags["dakd.dataset_pair"]) == ("d", "gta5->cityscapes")
    assert finish_task(kfp_run_id="job-1", experiment="dakd-test", state="FAILED") == out["parent_run_id"]
    assert client.get_run(out["parent_run_id"]).info.status == "FAILED"
    env["results"]["parent"] = out["parent_run_id"]
    env["plan"] = out


def test_ingest_pins_manifests_and_target_train_is_unlabelled(env, monkeypatch):
    from dakd_core.data.manifest import read_manifest
    from dakd_core.orchestration.tasks.common import ENV_TIMINGS_URI
    from dakd_core.orchestration.tasks.ingest import ingest_task

    c, root = dict(env["common"], run_name="t1", kfp_run_id="job-1"), env["root"]
    monkeypatch.setenv(ENV_TIMINGS_URI, f"{c['store_uri']}/runs/t1/timings")  # as `dakd run` sets it
    src = ingest_task(**c, fmt="gta5", root_uri=str(root / "src"), domain="source", splits=["train"], workers=1)
    tgt = ingest_task(**c, fmt="cityscapes", root_uri=(root / "tgt").as_uri(), domain="target",
                      splits=["train", "val"], workers=1)
    assert src["num_samples"] == {"train": 4} and src["val_manifest"] == ""
    assert tgt["num_samples"] == {"train": 4, "val": 2}
    uri, digest = pins.split(tgt["train_manifest"])
    assert len(digest) == 64 and pins.sha256_of(uri) == digest
    assert all(r["label_uri"] is None for r in read_manifest(uri))  # no target labels reach training
    assert all(r["label_uri"] for r in read_manifest(pins.resolve(tgt["val_manifest"])))
    # timings recorded for `dakd run`'s overhead report, where it asked for them
    assert json.loads(read_bytes(f"{c['store_uri']}/runs/t1/timings/ingest.json"))["seconds"] > 0
    env["results"].update(src=src["train_manifest"], tgt=tgt["train_manifest"], val=tgt["val_manifest"])


def test_ingest_rejects_bad_parameters(env):
    from dakd_core.orchestration.tasks.ingest import ingest_task

    with pytest.raises(ConfigError, match="domain"):
        ingest_task(**env["common"], run_name="t1", fmt="gta5", root_uri="/x", domain="both", splits=["train"])
    with pytest.raises(ConfigError, match="splits"):
        ingest_task(**env["common"], run_name="t1", fmt="gta5", root_uri="/x", domain="source", splits=["test"])
    with pytest.raises(ConfigError, match="field 'target_uri': gs://b/raw"):
        ingest_task(**env["common"], run_name="t1", fmt="gta5", root_uri="gs://b/raw", domain="target",
                    splits=["train"])


def test_pretrain_and_adapt_write_content_addressed_and_reuse(env):
    import time

    from dakd_core.models.checkpoint import load_checkpoint
    from dakd_core.orchestration.tasks.adapt import adapt_task
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    c, r, plan = env["common"], env["results"], env["plan"]
    pre = pretrain_task(**c, role="student", config=plan["pretrain_student"], source_manifest=r["src"])
    uri = pins.resolve(pre["checkpoint"])
    assert re.match(rf"{c['store_uri']}/stages/pretrain/[0-9a-f]{{20}}/", uri), uri
    assert load_checkpoint(uri)["model_name"] == "deeplabv2_tiny"
    # the same settings and inputs: the same folder, the finished run resumed, not trained again
    t0 = time.perf_counter()
    again = pretrain_task(**c, role="student", config=plan["pretrain_student"], source_manifest=r["src"])
    assert again["checkpoint"] == pre["checkpoint"], (time.perf_counter() - t0)
    ada = adapt_task(**c, role="student", config=plan["adapt_student"], init=pre["checkpoint"],
                     source_manifest=r["src"], target_manifest=r["tgt"])
    assert "/stages/adapt/" in pins.resolve(ada["checkpoint"])
    assert load_checkpoint(pins.resolve(ada["checkpoint"]))["config"]["d_ndf"] == 16
    r.update(pre=pre["checkpoint"], ada=ada["checkpoint"])


def test_deterministic_failure_is_recorded_and_a_retry_is_not_recomputed(env, tmp_path):
    """KFP retries any failed pod: the retry of a DataError re-raises it at once, even when the
    stage could now run (the record, not the stage, answers)."""
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    c, plan = env["common"], env["plan"]
    manifest = (tmp_path / "m.parquet").as_uri()
    write_bytes(manifest, b"v1")
    pinned = pins.pin(manifest)
    write_bytes(manifest, b"v2")
    with pytest.raises(DataError, match="changed after it was published"):
        pretrain_task(**c, role="teacher", config=plan["pretrain_teacher"], source_manifest=pinned)
    write_bytes(manifest, b"v1")  # the input would pass now: the retry must still not recompute
    with pytest.raises(DataError, match="earlier attempt with the same inputs.*not retried"):
        pretrain_task(**c, role="teacher", config=plan["pretrain_teacher"], source_manifest=pinned)
    assert len(open_store(c["store_uri"]).list("failures/pretrain-")) == 1


def test_cache_shards_then_index(env):
    from dakd_core.orchestration.tasks.cache_teacher import cache_index_task, cache_shard_task

    c, r, plan = env["common"], env["results"], env["plan"]
    # the plan's cache settings are the distill stage's resizes (test_distill_c_then_d)
    distill = json.loads(plan["distill_first"])
    assert json.loads(plan["cache_teacher"]) == {"sizes": [distill["source_resize"], distill["target_resize"]]}
    inputs = dict(config=plan["cache_teacher"], teacher=r["ada"], manifests=[r["src"], r["tgt"]], num_shards=2)
    counts = [cache_shard_task(**c, shard_index=k, **inputs)["num_samples"] for k in range(2)]
    assert sum(counts) == 8
    index = cache_index_task(**c, shard_samples=[float(n) for n in counts], **inputs)  # Collected: floats
    assert index["num_samples"] == 8 and re.search(r"/teacher_cache/[0-9a-f]{20}/index.parquet#",
                                                   index["index"]), index["index"]
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

    c, r = env["common"], env["results"]
    # other settings than test_cache_shards_then_index's: another content-addressed cache folder
    inputs = dict(config=json.dumps({"sizes": [[16, 48], [24, 40]]}), teacher=r["ada"],
                  manifests=[r["src"], r["tgt"]], num_shards=1)
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
    from dakd_core.orchestration.tasks.distill import distill_task

    c, r, plan = env["common"], env["results"], env["plan"]
    args = dict(teacher=r["ada"], cache_index=r["index"], source_manifest=r["src"], target_manifest=r["tgt"])
    first = distill_task(**c, config=plan["distill_first"], init=r["ada"], **args)
    assert first["paradigm"] == "c"
    second = distill_task(**c, config=plan["distill_second"], init=first["checkpoint"], **args)
    assert second["paradigm"] == "d" and "/stages/distill/" in second["checkpoint"]
    assert load_checkpoint(pins.resolve(second["checkpoint"]))["config"]["paradigm"] == "d"
    r["dist"] = second["checkpoint"]


def test_export_evaluate_register_promote(env):
    import mlflow

    from dakd_core.orchestration.tasks.evaluate import ROWS, evaluate_task
    from dakd_core.orchestration.tasks.export import export_task
    from dakd_core.orchestration.tasks.register import promote_task, register_task

    c, r, plan = env["common"], env["results"], env["plan"]
    exp = export_task(**c, config=plan["export"], checkpoint=r["dist"], val_manifest=r["val"])
    assert exp["onnx_fp16"].endswith(".onnx") and len(exp["onnx_fp16_sha256"]) == 64
    onnx = f"{exp['onnx_fp16']}#sha256={exp['onnx_fp16_sha256']}"
    uris = [r["pre"], r["ada"], r["pre"], r["ada"], r["dist"], onnx]
    ev = evaluate_task(**c, config=plan["evaluate"], models=dict(zip(ROWS, uris)), val_manifest=r["val"])
    assert set(ev["miou"]) == set(ROWS) and all(0 <= v <= 1 for v in ev["miou"].values())
    assert "student distilled" in ev["report"] and "/stages/evaluate/" in ev["metrics"]
    # the report the KFP UI renders: every plot inline, none linked by a relative path
    assert ev["report"].count("](data:image/png;base64,iVBORw0KGgo") >= 2 and "](plots/" not in ev["report"]
    # the distilled student's confusion matrix: 19 x 19, its diagonal the correctly labelled pixels
    distilled = json.loads(read_bytes(pins.resolve(ev["metrics"])))["models"]["student distilled"]
    matrix = ev["confusion"]["matrix"]
    assert ev["confusion"]["categories"] == list(distilled["per_class_iou"]) and len(matrix) == 19
    assert all(len(row) == 19 for row in matrix)
    trace = sum(matrix[i][i] for i in range(19))
    assert trace / distilled["labelled_pixels"] == pytest.approx(distilled["pixel_accuracy"])
    run = dict(c, run_name="t1", kfp_run_id="job-1", parent_run_id=env["results"]["parent"])
    reg = register_task(**run, config=plan["register"], export_record=exp["record"], metrics=ev["metrics"],
                        stage_outputs={"pretrain_student": r["pre"], "distill": r["dist"]})
    assert reg["name"] == "dakd-gta5-to-cityscapes" and reg["version"] == "1"
    recorded = json.loads(read_bytes(f"{c['store_uri']}/runs/t1/stages.json"))
    assert recorded == {"pretrain_student": r["pre"], "distill": r["dist"], "export": exp["record"],
                        "evaluate": ev["metrics"]}
    # the stage runs, run-independent, are linked to the parent run by tags
    client = mlflow.MlflowClient()
    parent = client.get_run(env["results"]["parent"]).data
    assert parent.tags["dakd.stage.distill"] == pins.split(r["dist"])[0]
    distill_runs = parent.tags["dakd.stage_run.distill"].split(",")
    assert {client.get_run(i).data.tags["dakd.paradigm"] for i in distill_runs} == {"d"}
    assert parent.metrics["miou.student_distilled"] == pytest.approx(ev["miou"]["student distilled"])
    out = promote_task(**run, name=reg["name"], version=reg["version"], config=plan["promote"])
    assert out["decision"] == "promoted"
    champion = client.get_model_version_by_alias(reg["name"], "champion")
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


def test_report_plots_are_inlined_for_the_kfp_ui(tmp_path):
    import base64

    from dakd_core.orchestration.tasks.evaluate import embed_plots

    folder = tmp_path.as_uri()
    write_bytes(f"{folder}/plots/a.png", b"\x89PNG-a")
    write_bytes(f"{folder}/plots/b_c.png", b"\x89PNG-bc")
    report = "# r\n\n![plots/a.png](plots/a.png)\n![plots/b_c.png](plots/b_c.png)\n![ext](https://x/y.png)\n"
    out = embed_plots(report, folder)
    assert out == ("# r\n\n![plots/a.png](data:image/png;base64," + base64.b64encode(b"\x89PNG-a").decode() + ")\n"
                   "![plots/b_c.png](data:image/png;base64," + base64.b64encode(b"\x89PNG-bc").decode() + ")\n"
                   "![ext](https://x/y.png)\n")
