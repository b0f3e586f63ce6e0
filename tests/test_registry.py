"""Model registry: the champion gate on a sqlite-backed MLflow registry, concurrency, register."""

from __future__ import annotations

import threading

import pytest

from dakd_core.errors import DakdError
from dakd_core.registry import CHAMPION, TAG_MANIFEST, promote

NAME = "dakd-gta5-to-cityscapes"


def _make_versions(tmp_path, specs: list[tuple[float, str]]) -> list[str]:
    """Versions with the tags `register` writes that promotion reads (miou, manifest sha)."""
    import mlflow

    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    artifact = tmp_path / "artifact"
    artifact.mkdir(exist_ok=True)
    versions = []
    for miou, manifest in specs:
        mv = client.create_model_version(
            NAME, source=artifact.as_uri(), tags={"miou": str(miou), TAG_MANIFEST: manifest}
        )
        versions.append(str(mv.version))
    return versions


def _champion() -> str:
    import mlflow

    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, CHAMPION).version)


def test_promotion_gate_both_ways(mlflow_uri, tmp_path):
    import mlflow

    v1, v2, v3, v4 = _make_versions(tmp_path, [(0.50, "aaa"), (0.52, "aaa"), (0.60, "aaa"), (0.90, "bbb")])
    first = promote(NAME, version=v1, min_gain=0.05, settle_s=0)
    assert (first.decision, first.previous_champion, _champion()) == ("promoted", None, v1)

    small = promote(NAME, version=v2, min_gain=0.05, settle_s=0)  # +0.02 < 0.05
    assert small.decision == "rejected" and _champion() == v1

    big = promote(NAME, version=v3, min_gain=0.05, settle_s=0)  # +0.10
    assert (big.decision, big.previous_champion, _champion()) == ("promoted", v1, v3)

    with pytest.raises(DakdError, match="manifest"):
        promote(NAME, version=v4, min_gain=0.0, settle_s=0)  # better, but another manifest
    assert _champion() == v3

    client = mlflow.MlflowClient()
    tags = {v: client.get_model_version(NAME, v).tags for v in (v1, v2, v3, v4)}
    assert tags[v2]["promotion_decision"] == "rejected"
    assert tags[v3]["promotion_decision"] == "promoted"
    assert tags[v3]["promotion_previous_champion"] == v1
    assert tags[v4]["promotion_decision"] == "rejected" and "manifest" in tags[v4]["promotion_reason"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == 4  # nothing deleted
    assert promote(NAME, version=v3, settle_s=0).decision == "already-champion"


def test_promote_uses_challenger_alias_and_requires_it(mlflow_uri, tmp_path):
    import mlflow

    (v1,) = _make_versions(tmp_path, [(0.4, "aaa")])
    with pytest.raises(DakdError, match="challenger"):
        promote(NAME, settle_s=0)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "challenger", v1)
    assert promote(NAME, settle_s=0).decision == "promoted" and _champion() == v1


def test_concurrent_promotions_leave_the_serial_champion(mlflow_uri, tmp_path):
    """v2 (0.70) and v3 (0.80) race against champion v1 (0.50) with min_gain 0.05: in either serial
    order v3 ends as champion, so the race must end there too."""
    v1, v2, v3 = _make_versions(tmp_path, [(0.50, "aaa"), (0.70, "aaa"), (0.80, "aaa")])
    promote(NAME, version=v1, settle_s=0)
    barrier = threading.Barrier(2)
    results, errors = {}, []

    def worker(version):
        try:
            barrier.wait()
            results[version] = promote(NAME, version=version, min_gain=0.05, settle_s=0.2)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert _champion() == v3
    assert results[v3].decision == "promoted"
