"""Model registry: the champion gate on a sqlite-backed MLflow registry, concurrency, register."""

from __future__ import annotations

import json
import threading
import time

import pytest

from dakd_core.errors import ConfigError, DakdError
from dakd_core.registry import CHAMPION, LOCK_SUFFIX, TAG_MANIFEST, PromoteConfig, promote

NAME = "dakd-gta5-to-cityscapes"


def _make_versions(tmp_path, specs: list[tuple[float, str]], legacy: bool = False) -> list[str]:
    """Versions as `register` leaves them: a logged model with `miou` measured on the evaluation
    manifest (its sha256 the metric's dataset digest), the manifest sha as a version tag.
    `legacy`: the `miou` tag that registrations before logged-model metrics wrote instead."""
    import mlflow

    from dakd_core.registry import _attach_metrics

    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    artifact = tmp_path / "artifact"
    artifact.mkdir(exist_ok=True)
    versions = []
    for miou, manifest in specs:
        if legacy:
            mv = client.create_model_version(
                NAME, source=artifact.as_uri(), tags={"miou": str(miou), TAG_MANIFEST: manifest})
        else:
            run = client.create_run("0")
            model = mlflow.initialize_logged_model(name="student", source_run_id=run.info.run_id, experiment_id="0")
            _attach_metrics(client, run.info.run_id, model.model_id, {"miou": miou},
                            {"manifest_uri": f"file:///data/{manifest}/manifest.parquet", "manifest_sha256": manifest})
            mlflow.finalize_logged_model(model.model_id, "READY")
            client.set_terminated(run.info.run_id)
            mv = client.create_model_version(NAME, source=f"models:/{model.model_id}", tags={TAG_MANIFEST: manifest})
        versions.append(str(mv.version))
    return versions


def _champion() -> str:
    import mlflow

    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, CHAMPION).version)


def test_promotion_gate_both_ways(mlflow_uri, tmp_path):
    import mlflow

    v1, v2, v3, v4 = _make_versions(tmp_path, [(0.50, "aaa"), (0.52, "aaa"), (0.60, "aaa"), (0.90, "bbb")])
    first = promote(NAME, version=v1, min_gain=0.05)
    assert (first.decision, first.previous_champion, _champion()) == ("promoted", None, v1)

    small = promote(NAME, version=v2, min_gain=0.05)  # +0.02 < 0.05
    assert small.decision == "rejected" and _champion() == v1

    big = promote(NAME, version=v3, min_gain=0.05)  # +0.10
    assert (big.decision, big.previous_champion, _champion()) == ("promoted", v1, v3)

    # Better, but evaluated on another manifest: the champion stays and nothing raises (this is
    # the pipeline's last step).
    other = promote(NAME, version=v4, min_gain=0.0)
    assert (other.decision, other.champion, other.previous_champion) == ("not-comparable", v3, v3)
    assert "'bbb'" in other.reason and "'aaa'" in other.reason and f"v{v3} kept" in other.reason
    assert _champion() == v3

    client = mlflow.MlflowClient()
    tags = {v: client.get_model_version(NAME, v).tags for v in (v1, v2, v3, v4)}
    assert tags[v2]["promotion_decision"] == "rejected"
    assert tags[v3]["promotion_decision"] == "promoted"
    assert tags[v3]["promotion_previous_champion"] == v1
    assert tags[v4]["promotion_decision"] == "not-comparable" and "manifest" in tags[v4]["promotion_reason"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == 4  # nothing deleted
    assert promote(NAME, version=v3).decision == "already-champion"


def test_ties_never_move_the_champion(mlflow_uri, tmp_path):
    """The default min_gain (declared once, PromoteConfig) is 0.1 mIoU point; a tie is refused
    even with min_gain=0."""
    assert PromoteConfig.model_fields["min_gain"].default == 0.001
    assert "0.1 point" in PromoteConfig.model_fields["min_gain"].description
    v1, tie, noise, enough = _make_versions(tmp_path, [(0.502, "aaa"), (0.502, "aaa"), (0.5025, "aaa"), (0.503, "aaa")])
    assert promote(NAME, version=v1).decision == "promoted"
    assert promote(NAME, version=tie, min_gain=0.0).decision == "rejected"
    assert promote(NAME, version=tie).decision == "rejected"
    assert promote(NAME, version=noise).decision == "rejected"  # +0.0005 < 0.001
    assert _champion() == v1
    # +0.001 exactly (0.503 - 0.502 is 0.00099999999999989 in doubles): promoted
    result = promote(NAME, version=enough)
    assert (result.decision, result.previous_champion, _champion()) == ("promoted", v1, enough)
    with pytest.raises(ConfigError, match="min_gain"):
        promote(NAME, version=enough, min_gain=-0.01)


def test_champion_without_the_metric_is_kept(mlflow_uri, tmp_path):
    import mlflow

    v1, v2 = _make_versions(tmp_path, [(0.5, "aaa"), (0.6, "aaa")], legacy=True)
    client = mlflow.MlflowClient()
    client.delete_model_version_tag(NAME, v1, "miou")  # e.g. a version registered by hand
    client.set_registered_model_alias(NAME, CHAMPION, v1)
    result = promote(NAME, version=v2)
    assert result.decision == "not-comparable" and "has no 'miou' measured on" in result.reason
    assert _champion() == v1


def test_versions_registered_with_metric_tags_still_compare(mlflow_uri, tmp_path):
    """A champion registered before metrics went to logged models (miou as a tag) is compared on
    its tagged manifest, against a challenger whose miou is a logged-model metric."""
    (old,) = _make_versions(tmp_path, [(0.50, "aaa")], legacy=True)
    new, other = _make_versions(tmp_path, [(0.60, "aaa"), (0.90, "bbb")])
    assert promote(NAME, version=old).decision == "promoted"
    assert promote(NAME, version=other).decision == "not-comparable" and _champion() == old
    result = promote(NAME, version=new)
    assert (result.decision, result.previous_champion, _champion()) == ("promoted", old, new)
    assert "0.6000 vs champion v1 0.5000" in result.reason


def test_promote_uses_challenger_alias_and_requires_it(mlflow_uri, tmp_path):
    import mlflow

    (v1,) = _make_versions(tmp_path, [(0.4, "aaa")])
    with pytest.raises(DakdError, match="challenger"):
        promote(NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "challenger", v1)
    assert promote(NAME).decision == "promoted" and _champion() == v1


def _race(versions: list[str], slow: str | None = None, stall_s: float = 1.0) -> dict:
    """Promote `versions` from one thread each, started together; the thread of `slow` stalls
    `stall_s` just before it moves the alias (a paused pod, a slow registry call)."""
    import mlflow

    barrier = threading.Barrier(len(versions))
    results, errors = {}, []
    real_set = mlflow.MlflowClient.set_registered_model_alias

    def stalling_set(self, *args, **kwargs):
        if threading.current_thread().name == f"promote-{slow}":
            time.sleep(stall_s)
        return real_set(self, *args, **kwargs)

    def worker(version):
        try:
            barrier.wait()
            results[version] = promote(NAME, version=version, min_gain=0.05)
        except Exception as e:  # surfaced below
            errors.append(e)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlflow.MlflowClient, "set_registered_model_alias", stalling_set)
        threads = [threading.Thread(target=worker, args=(v,), name=f"promote-{v}") for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    return results


def test_concurrent_promotions_leave_the_serial_champion(mlflow_uri, tmp_path):
    """v2 (0.70) and v3 (0.80) race against champion v1 (0.50) with min_gain 0.05: in either serial
    order v3 ends as champion, so the race must end there too."""
    v1, v2, v3 = _make_versions(tmp_path, [(0.50, "aaa"), (0.70, "aaa"), (0.80, "aaa")])
    promote(NAME, version=v1)
    results = _race([v2, v3])
    assert _champion() == v3
    assert results[v3].decision == "promoted"


@pytest.mark.parametrize("slow", ["first", "second"])
def test_concurrent_promotions_cannot_both_win(mlflow_uri, tmp_path, slow):
    """v2 (0.70) and v3 (0.71) both beat champion v1 (0.50) but not each other (min_gain 0.05): in
    any serial order exactly one is promoted. One promoter stalls between deciding and moving the
    alias, the case a read-set-re-read loop cannot see."""
    import mlflow

    v1, v2, v3 = _make_versions(tmp_path, [(0.50, "aaa"), (0.70, "aaa"), (0.71, "aaa")])
    promote(NAME, version=v1)
    results = _race([v2, v3], slow=v2 if slow == "first" else v3)
    decisions = sorted(r.decision for r in results.values())
    assert decisions == ["promoted", "rejected"], {v: (r.decision, r.reason) for v, r in results.items()}
    winner = next(v for v, r in results.items() if r.decision == "promoted")
    loser = next(v for v in results if v != winner)
    assert _champion() == winner and results[winner].previous_champion == v1
    assert results[loser].champion == winner and f"champion v{winner}" in results[loser].reason
    # the lock is gone once both are done
    names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert names == {NAME}


def test_stale_lock_is_broken_and_a_held_lock_times_out(mlflow_uri, tmp_path):
    import mlflow

    (v1,) = _make_versions(tmp_path, [(0.5, "aaa")])
    client = mlflow.MlflowClient()
    lock = NAME + LOCK_SUFFIX
    client.create_registered_model(lock, tags={"dakd.lock_holder": "host:1:dead"})
    with pytest.raises(DakdError, match=r"promotion lock .*promotion-lock is held by host:1:dead"):
        promote(NAME, version=v1, lock_timeout_s=0.5, stale_lock_s=60)
    assert client.get_model_version(NAME, v1).aliases == []  # nothing moved without the lock
    time.sleep(0.6)
    result = promote(NAME, version=v1, lock_timeout_s=5, stale_lock_s=0.5)  # a dead holder's lock
    assert result.decision == "promoted" and _champion() == v1
    assert {m.name for m in client.search_registered_models()} == {NAME}


# ------------------------------------------------------------------------------------ register


def _evaluation(tmp_path, name: str, manifest_sha: str, miou: float) -> str:
    """A `dakd evaluate` metrics.json for the registered row (numbers chosen by the test)."""
    from dakd_core.orchestration.tasks.register import DISTILLED_ROW

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "manifest_uri": f"file:///data/{manifest_sha}/manifest.parquet", "manifest_sha256": manifest_sha,
        "num_samples": 2,
        "models": {DISTILLED_ROW: {"miou": miou, "pixel_accuracy": 0.81, "mean_class_accuracy": 0.5,
                                   "ece": 0.07, "per_class_iou": {"road": 0.9, "traffic light": 0.1, "train": None}}},
    }))
    return path.as_uri()


def test_register_uses_the_exported_model_and_attaches_metrics(mlflow_uri, tmp_path, monkeypatch):
    """`dakd export` logs the ONNX files as MLflow models; `register` makes the version from that
    logged model (no second copy) and attaches the evaluation as logged-model metrics on the
    evaluation manifest, not as text tags. Promotion then reads those metrics."""
    import mlflow
    import torch

    from dakd_core.export import ExportConfig
    from dakd_core.export import run as export
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload, save_checkpoint
    from dakd_core.orchestration.tasks.register import DISTILLED_ROW
    from dakd_core.registry import RegisterConfig, register

    monkeypatch.setenv("DAKD_SYSTEM_METRICS", "0")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(str(tmp_path / "student.pt"), make_payload(create_model("deeplabv2_tiny"), step=1))
    exported = export(ExportConfig(model=checkpoint, out=str(tmp_path / "export"), resolution=(32, 64), warmup=0,
                                   iters=1, device="cpu"))
    record_uri, record = exported.record_uri, exported.record
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("dakd").experiment_id
    logged_before = {m.model_id for m in client.search_logged_models([experiment])}
    aaa, bbb = "a" * 64, "b" * 64

    def reg(metrics_uri):
        return register(RegisterConfig(export=record_uri, metrics=metrics_uri, metrics_model=DISTILLED_ROW,
                                       source="gta5", target="cityscapes", paradigm="d", git_commit="abc1234"))

    first = reg(_evaluation(tmp_path, "first", aaa, 0.41))
    # nothing logged again: the logged models are still the export's three
    assert {m.model_id for m in client.search_logged_models([experiment])} == logged_before
    version = client.get_model_version(first.name, first.version)
    assert version.source == record["mlflow"]["student_onnx_fp16"] == first.model_uri  # the export's logged model
    assert version.tags[TAG_MANIFEST] == aaa and version.tags["artifact_sha256"] == record["artifacts"]["onnx_fp16"]["sha256"]
    assert not {"miou", "pixel_accuracy", "num_parameters", "latency_ms"} & set(version.tags)  # numbers are metrics
    metrics = {m.key: m for m in client.get_logged_model(first.model_uri.split("/")[-1]).metrics}
    assert metrics["miou"].value == pytest.approx(0.41) and metrics["pixel_accuracy"].value == pytest.approx(0.81)
    assert metrics["iou.road"].value == pytest.approx(0.9) and metrics["iou.traffic_light"].value == pytest.approx(0.1)
    assert "iou.train" not in metrics  # absent class: no number
    assert (metrics["miou"].dataset_name, metrics["miou"].dataset_digest) == (f"file:///data/{aaa}/manifest.parquet", aaa[:16])
    assert metrics["num_parameters"].value == record["num_parameters"] and metrics["num_parameters"].dataset_digest is None
    assert metrics["latency.latency_ms"].value == pytest.approx(record["latency"]["onnx_fp16"]["latency_ms"])
    assert first.metrics["miou"] == pytest.approx(0.41)

    assert promote(NAME).decision == "promoted"  # reads the challenger's metric from its logged model
    # The same export evaluated on another manifest: a second miou on the same logged model. The
    # champion (that very model) is compared on the challenger's manifest, 0.90 against 0.90 -
    # not its first evaluation's 0.41, which would make the artifact beat itself.
    other = reg(_evaluation(tmp_path, "other", bbb, 0.90))
    assert other.version != first.version
    result = promote(NAME)
    assert result.decision == "rejected" and _champion() == first.version
    assert f"0.9000 vs champion v{first.version} 0.9000" in result.reason
    tie = reg(_evaluation(tmp_path, "tie", aaa, 0.41))
    assert promote(NAME, version=tie.version).decision == "rejected" and _champion() == first.version
