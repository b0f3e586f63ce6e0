"""MLflow model registry: register exported students, gate the `champion` alias.

One registered model per dataset pair (`dakd-<source>-to-<target>`). `register` logs the exported
ONNX student (its sha256 checked against export.json first) as a new version, tags it with what a
reviewer needs (pair, paradigm, teacher, metrics, size, latency, git commit, pipeline run,
artifact and evaluation-manifest sha256) and points the `challenger` alias at it.

`promote` moves `champion` to a challenger only if it beats the current champion by `min_gain` on
the same evaluation manifest (no champion yet: promote). Aliases, never the deprecated stages;
versions are never deleted. The registry has no compare-and-set for aliases, so promotion is a
loop: read the champion, decide, set, wait a moment, re-read; if another promoter moved the alias
meanwhile, decide again against the new champion. Two concurrent promotions therefore end with the
champion a serial order of the two would give (barring one promoter stalling between its read and
its write for longer than the settle delay).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from pydantic import Field

from dakd_core.config import StrictConfig
from dakd_core.errors import ConfigError, DakdError

CHALLENGER, CHAMPION = "challenger", "champion"
TAG_MANIFEST = "eval_manifest_sha256"
TAG_SHA = "artifact_sha256"


def registered_model_name(source: str, target: str) -> str:
    """The one registered-model name of a dataset pair."""
    name = f"dakd-{source}-to-{target}".lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise ConfigError(f"source/target '{source}'/'{target}' do not make a valid model name ({name})")
    return name


class RegisterConfig(StrictConfig):
    export: str = Field(description="export.json URI written by `dakd export`")
    metrics: str = Field(description="metrics.json URI written by `dakd evaluate` for this student")
    metrics_model: str | None = Field(None, description="entry of metrics.json's models; default: the only one")
    source: str
    target: str
    name: str | None = Field(None, description="registered model name; default dakd-<source>-to-<target>")
    paradigm: str = ""
    teacher: str = ""
    artifact: Literal["onnx_fp16", "onnx_fp32"] = "onnx_fp16"
    pipeline_run_id: str | None = Field(None, description="default: $DAKD_PIPELINE_RUN_ID")
    git_commit: str | None = Field(None, description="default: $DAKD_GIT_COMMIT or `git rev-parse HEAD`")


@dataclass
class RegisterResult:
    name: str
    version: str
    tags: dict


@dataclass
class PromotionResult:
    name: str
    challenger: str
    decision: Literal["promoted", "rejected", "already-champion"]
    champion: str | None
    previous_champion: str | None
    reason: str


def _git_commit() -> str:
    if os.environ.get("DAKD_GIT_COMMIT"):
        return os.environ["DAKD_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _load_json(uri: str, what: str) -> dict:
    from dakd_core.storage import read_bytes

    try:
        return json.loads(read_bytes(uri))
    except ValueError as e:
        raise DakdError(f"{what} {uri} is not valid JSON: {e}") from None


def _pick_metrics(metrics: dict, uri: str, model: str | None) -> dict:
    models = metrics.get("models")
    if not isinstance(models, dict) or not models:
        raise DakdError(f"{uri} has no 'models' entries (is it a `dakd evaluate` metrics.json?)")
    if model is None:
        if len(models) != 1:
            raise ConfigError(f"metrics_model: {uri} has several models {sorted(models)}; name one")
        return next(iter(models.values()))
    if model not in models:
        raise ConfigError(f"metrics_model: '{model}' not in {uri} (has {sorted(models)})")
    return models[model]


def register(cfg: RegisterConfig) -> RegisterResult:
    import mlflow
    import onnx

    from dakd_core import tracking
    from dakd_core.evaluation.inference import verify_sha256
    from dakd_core.export import model_signature
    from dakd_core.storage import read_bytes

    name = cfg.name or registered_model_name(cfg.source, cfg.target)
    record = _load_json(cfg.export, "export record")
    try:
        entry = record["artifacts"][cfg.artifact]
    except (KeyError, TypeError):
        raise DakdError(f"export record {cfg.export} lists no '{cfg.artifact}' artifact") from None
    data = read_bytes(entry["uri"])
    sha = verify_sha256(data, entry["sha256"], entry["uri"])
    metrics_doc = _load_json(cfg.metrics, "metrics")
    m = _pick_metrics(metrics_doc, cfg.metrics, cfg.metrics_model)
    latency = record.get("latency", {}).get(cfg.artifact, {})
    tags = {
        "dataset_pair": f"{cfg.source}->{cfg.target}",
        "paradigm": cfg.paradigm,
        "teacher": cfg.teacher,
        "model_name": record.get("model_name", ""),
        "precision": cfg.artifact,
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "num_parameters": record.get("num_parameters"),
        "latency_ms": latency.get("latency_ms"),
        "latency_device": record.get("latency", {}).get("device"),
        "git_commit": cfg.git_commit or _git_commit(),
        "pipeline_run_id": cfg.pipeline_run_id or os.environ.get("DAKD_PIPELINE_RUN_ID", ""),
        TAG_SHA: sha,
        TAG_MANIFEST: metrics_doc.get("manifest_sha256", ""),
        "eval_manifest": metrics_doc.get("manifest_uri", ""),
        "export_record": cfg.export,
    }
    tags = {k: "" if v is None else str(v) for k, v in tags.items()}
    client = mlflow.MlflowClient()
    with tracking.stage_run("register", params={"registered_model": name, "artifact": cfg.artifact}):
        info = mlflow.onnx.log_model(
            onnx.load_from_string(data),
            name="student",
            signature=model_signature(int(record.get("num_classes", 19))),
            save_as_external_data=False,  # one file, byte-identical to the exported one (sha256)
            pip_requirements=["onnx", "onnxruntime"],
        )
        _ensure_registered_model(client, name)
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return RegisterResult(name, str(version.version), tags)


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="dakd students of one dataset pair")
        except MlflowException as e:  # created concurrently by another registration
            if "already exists" not in str(e).lower():
                raise


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _metric(version, metric: str, name: str) -> float:
    try:
        return float(version.tags[metric])
    except (KeyError, ValueError):
        raise DakdError(f"version {version.version} of {name} has no numeric '{metric}' tag") from None


def promote(
    name: str,
    metric: str = "miou",
    min_gain: float = 0.0,
    version: str | None = None,
    settle_s: float = 0.3,
    max_rounds: int = 10,
) -> PromotionResult:
    """Gate the champion alias (see module docstring). `version` defaults to the challenger alias."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        challenger = client.get_model_version(name, version) if version else _version_by_alias(client, name, CHALLENGER)
    except MlflowException as e:
        raise DakdError(f"registered model {name} has no version {version}: {e.message}") from None
    if challenger is None:
        raise DakdError(f"registered model {name} has no '{CHALLENGER}' alias (run `dakd register` first)")
    value = _metric(challenger, metric, name)
    manifest = challenger.tags.get(TAG_MANIFEST, "")

    for _ in range(max_rounds):
        champion = _version_by_alias(client, name, CHAMPION)
        if champion is not None and str(champion.version) == str(challenger.version):
            return _record(client, name, challenger, "already-champion", str(champion.version), None, "already the champion")
        previous = str(champion.version) if champion is not None else None
        if champion is not None:
            if champion.tags.get(TAG_MANIFEST, "") != manifest or not manifest:
                reason = (
                    f"refused: challenger v{challenger.version} was evaluated on manifest sha256 "
                    f"'{manifest[:12]}' but champion v{champion.version} on '{champion.tags.get(TAG_MANIFEST, '')[:12]}'; "
                    "evaluate both on the same manifest"
                )
                _record(client, name, challenger, "rejected", previous, previous, reason)
                raise DakdError(f"{name}: {reason}")
            gain = value - _metric(champion, metric, name)
            if gain < min_gain:
                reason = f"{metric} {value:.4f} vs champion v{champion.version} gains {gain:+.4f} < {min_gain}"
                return _record(client, name, challenger, "rejected", previous, previous, reason)
            reason = f"{metric} {value:.4f} vs champion v{champion.version} gains {gain:+.4f} >= {min_gain}"
        else:
            reason = "there was no champion before"
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        time.sleep(settle_s * (1 + random.random()))  # let a concurrent writer land before re-reading
        now = _version_by_alias(client, name, CHAMPION)
        if now is not None and str(now.version) == str(challenger.version):
            return _record(client, name, challenger, "promoted", str(challenger.version), previous, reason)
        # Someone else moved the alias after our read: decide again against the new champion.
    raise DakdError(f"{name}: champion alias kept changing; gave up after {max_rounds} rounds")


def _record(client, name, challenger, decision, champion, previous, reason) -> PromotionResult:
    """Decision, previous champion and time as tags on the challenger version and the model."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {
        "promotion_decision": decision,
        "promotion_reason": reason,
        "promotion_previous_champion": previous or "none",
        "promotion_time": stamp,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    client.set_registered_model_tag(name, "last_promotion", f"v{challenger.version} {decision} at {stamp}: {reason}")
    return PromotionResult(name, str(challenger.version), decision, champion, previous, reason)
