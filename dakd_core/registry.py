"""MLflow model registry: register exported students, gate the `champion` alias.

One registered model per dataset pair (`dakd-<source>-to-<target>`). `register` makes a new version
of the ONNX student that `dakd export` already logged as an MLflow model (listed in export.json;
its bytes checked against the recorded sha256), so the registry holds the one copy; only an export
run without MLflow has its file logged at registration. The evaluation (mIoU, pixel accuracy,
per-class IoU, ... measured on the evaluation manifest, which is the metrics' dataset), latency
and size are attached as metrics of that logged model (MLflow 3). The version is tagged with what
identifies it (pair, paradigm, teacher, precision, git commit, pipeline run, artifact and
evaluation-manifest sha256) and the `challenger` alias points at it.

`promote` moves `champion` to a challenger only if it beats the current champion by more than
nothing and at least `min_gain` (`PromoteConfig`, default 0.001 = 0.1 mIoU point: a tie never moves
the champion) on the same evaluation manifest; with no champion yet it promotes. A champion that
cannot be compared (evaluated on another manifest, or without the metric) is kept and the outcome
is `not-comparable`, not an error: the pipeline's last step does not fail because the evaluation
set changed. Aliases, never the deprecated stages; versions are never deleted.

The registry has no compare-and-set for aliases, so promoters serialise on a lock: a transient
registered model `<name>.promotion-lock`, whose creation is atomic on every backend. Read the
champion, decide, move the alias and record the decision all happen while holding it, so two
concurrent promotions end as one of their serial orders would, and cannot both win against the
same champion.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
import uuid
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


class PromoteConfig(StrictConfig):
    name: str = Field(description="registered model name")
    metric: str = Field("miou", description="evaluation metric compared, higher is better (a fraction)")
    min_gain: float = Field(
        0.001, ge=0,
        description="smallest gain over the champion in the promotion metric (mIoU as a fraction unless "
                    "another is named; the pipeline: mIoU on the target validation split) that moves the champion "
                    "alias (0.001 mIoU = 0.1 point: evaluation noise and ties never replace a champion)")
    version: str | None = Field(None, description="version to promote; default: the 'challenger' alias")


@dataclass
class RegisterResult:
    name: str
    version: str
    tags: dict
    metrics: dict  # attached to the registered logged model
    model_uri: str  # models:/m-<id>: the logged model the version points to


@dataclass
class PromotionResult:
    name: str
    challenger: str
    decision: Literal["promoted", "rejected", "already-champion", "not-comparable"]
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
    """A new version of the pair's registered model from the ONNX model `dakd export` logged (no
    second copy), evaluation metrics attached to that logged model, alias `challenger`."""
    import mlflow

    from dakd_core import tracking

    name = cfg.name or registered_model_name(cfg.source, cfg.target)
    record = _load_json(cfg.export, "export record")
    try:
        entry = record["artifacts"][cfg.artifact]
    except (KeyError, TypeError):
        raise DakdError(f"export record {cfg.export} lists no '{cfg.artifact}' artifact") from None
    metrics_doc = _load_json(cfg.metrics, "metrics")
    m = _pick_metrics(metrics_doc, cfg.metrics, cfg.metrics_model)
    tags = {
        "dataset_pair": f"{cfg.source}->{cfg.target}",
        "paradigm": cfg.paradigm,
        "teacher": cfg.teacher,
        "model_name": record.get("model_name", ""),
        "precision": cfg.artifact,
        "latency_device": record.get("latency", {}).get("device"),
        "git_commit": cfg.git_commit or _git_commit(),
        "pipeline_run_id": cfg.pipeline_run_id or os.environ.get("DAKD_PIPELINE_RUN_ID", ""),
        TAG_MANIFEST: metrics_doc.get("manifest_sha256", ""),
        "eval_manifest": metrics_doc.get("manifest_uri", ""),
        "export_record": cfg.export,
    }
    tags = {k: tracking.redact(k, "" if v is None else str(v)) for k, v in tags.items()}
    client = mlflow.MlflowClient()
    with tracking.stage_run("register", params={"registered_model": name, "artifact": cfg.artifact}) as run:
        model_uri, tags[TAG_SHA] = _exported_model(record, entry, cfg)
        model_id = _logged_model_id(model_uri)
        if model_id is None:
            raise DakdError(f"{cfg.export} lists {model_uri}, not an MLflow logged model (models:/m-<id>)")
        metrics = _model_metrics(m, record.get("latency", {}).get(cfg.artifact, {}), record)
        _attach_metrics(client, run.info.run_id, model_id, metrics, metrics_doc)
        _ensure_registered_model(client, name)
        version = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return RegisterResult(name, str(version.version), tags, metrics, model_uri)


def _exported_model(record: dict, entry: dict, cfg: RegisterConfig) -> tuple[str, str]:
    """(MLflow model URI, sha256) of the artifact to register, its bytes checked against export.json.

    `dakd export` logs the ONNX files as MLflow models and lists them in export.json: that logged
    model is registered, so the registry holds one copy. An export run without MLflow
    (`--no-mlflow`) has none, and the file is logged here instead, once.
    """
    import mlflow
    import onnx

    from dakd_core.evaluation.inference import download_onnx, verify_sha256
    from dakd_core.export import LOGGED_MODEL_NAMES, model_signature
    from dakd_core.storage import read_bytes

    logged = (record.get("mlflow") or {}).get(LOGGED_MODEL_NAMES[cfg.artifact])
    if logged:
        return logged, verify_sha256(download_onnx(logged), entry["sha256"],
                                     f"{logged} (logged by the export of {cfg.export})")
    data = read_bytes(entry["uri"])
    sha = verify_sha256(data, entry["sha256"], entry["uri"])
    info = mlflow.onnx.log_model(
        onnx.load_from_string(data),
        name=LOGGED_MODEL_NAMES[cfg.artifact],
        signature=model_signature(int(record.get("num_classes", 19))),
        save_as_external_data=False,  # one file, byte-identical to the exported one (sha256)
        pip_requirements=["onnx", "onnxruntime"],
    )
    return info.model_uri, sha


def _logged_model_id(model_uri: str) -> str | None:
    """`m-<id>` of a logged-model URI `models:/m-<id>` (None: another kind of URI)."""
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", model_uri or "")
    return match.group(1) if match else None


def _model_metrics(m: dict, latency: dict, record: dict) -> dict[str, float]:
    """Numbers a reviewer compares: the evaluation's scalars and per-class IoU, the artifact's
    latency and size."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out = {k: float(v) for k, v in m.items() if number(v)}
    out.update({f"iou.{re.sub(r'[^A-Za-z0-9._-]+', '_', c)}": float(v)
                for c, v in (m.get("per_class_iou") or {}).items() if number(v)})
    out.update({f"latency.{k}": float(v) for k, v in latency.items() if number(v)})
    if number(record.get("num_parameters")):
        out["num_parameters"] = float(record["num_parameters"])
    return out


# MLflow keeps a metric's dataset digest in 36 characters: the manifest's sha256 is shortened
# (the full one is the version's eval_manifest_sha256 tag, which promotion compares).
_DIGEST_LEN = 16


def _attach_metrics(client, run_id: str, model_id: str, metrics: dict[str, float], metrics_doc: dict) -> None:
    """`metrics` as metrics of the logged model (MLflow 3), evaluation ones linked to the manifest
    they were measured on (dataset name = manifest URI, digest = its sha256)."""
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    manifest, sha = metrics_doc.get("manifest_uri"), metrics_doc.get("manifest_sha256")
    dataset = (manifest[:500], sha[:_DIGEST_LEN]) if manifest and sha else (None, None)  # both or neither
    batch = []
    for key, value in metrics.items():
        measured_on = dataset if not key.startswith("latency.") and key != "num_parameters" else (None, None)
        batch.append(Metric(key, value, stamp, 0, model_id=model_id, dataset_name=measured_on[0],
                            dataset_digest=measured_on[1], run_id=run_id))
    for i in range(0, len(batch), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=batch[i:i + 1000])


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


def _metric(client, version, metric: str, manifest_sha256: str) -> float | None:
    """The version's numeric `metric` measured on the evaluation manifest `manifest_sha256` (None:
    it has none on that manifest).

    Registered versions carry it as a metric of their logged model whose dataset digest is the
    manifest's (a logged model can hold evaluations on several manifests); versions registered
    before metrics went to logged models carry a tag of that name, measured on their
    `eval_manifest_sha256` tag's manifest.
    """
    from mlflow.exceptions import MlflowException

    # The sqlite registry leaves ModelVersion.model_id empty; the source is the logged-model URI.
    model_id = getattr(version, "model_id", None) or _logged_model_id(version.source)
    if model_id:
        try:
            logged = [m for m in client.get_logged_model(model_id).metrics or [] if m.key == metric]
        except MlflowException:
            logged = []  # logged model deleted: only the tag can tell
        on_manifest = [m for m in logged if (m.dataset_digest or "") == manifest_sha256[:_DIGEST_LEN]]
        if on_manifest:
            return float(max(on_manifest, key=lambda m: m.timestamp).value)
        if logged:
            return None
    if version.tags.get(TAG_MANIFEST, "") != manifest_sha256:
        return None
    try:
        return float(version.tags[metric])
    except (KeyError, ValueError):
        return None


def promote(
    name: str,
    metric: str | None = None,
    min_gain: float | None = None,
    version: str | None = None,
    *,
    lock_timeout_s: float = 300.0,
    stale_lock_s: float = 120.0,
) -> PromotionResult:
    """Gate the champion alias (see module docstring). `version` defaults to the challenger alias;
    `metric` and `min_gain` (None) to their `PromoteConfig` defaults. A champion without `metric`
    on the challenger's evaluation manifest is kept and the outcome is `not-comparable`; nothing
    raises for it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dakd_core.config import build_config

    cfg = build_config(PromoteConfig, name=name, metric=metric, min_gain=min_gain, version=version)
    client = mlflow.MlflowClient()
    try:
        challenger = (client.get_model_version(name, cfg.version) if cfg.version
                      else _version_by_alias(client, name, CHALLENGER))
    except MlflowException as e:
        raise DakdError(f"registered model {name} has no version {cfg.version}: {e.message}") from None
    if challenger is None:
        raise DakdError(f"registered model {name} has no '{CHALLENGER}' alias (run `dakd register` first)")
    manifest = challenger.tags.get(TAG_MANIFEST, "")
    value = _metric(client, challenger, cfg.metric, manifest)
    if value is None:
        raise DakdError(f"version {challenger.version} of {name} has no numeric '{cfg.metric}' to compare")

    with _promotion_lock(client, name, lock_timeout_s, stale_lock_s):
        # Inside the lock no other promoter reads or moves the alias: the champion read here is
        # the one the decision replaces, so two promotions cannot both win against it.
        champion = _version_by_alias(client, name, CHAMPION)
        previous = str(champion.version) if champion is not None else None
        # the champion measured on the challenger's manifest, whatever its own tag says
        champion_value = _metric(client, champion, cfg.metric, manifest) if champion is not None and manifest else None
        decision, reason = _decide(challenger, champion, value, champion_value, cfg)
        if decision == "promoted":
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        now = str(challenger.version) if decision in ("promoted", "already-champion") else previous
        return _record(client, name, challenger, decision, now,
                       None if decision == "already-champion" else previous, reason)


# Metric values are stored as doubles: 0.503 - 0.502 is 0.00099999999999989 < 0.001.
_GAIN_TOLERANCE = 1e-9


def _decide(challenger, champion, value: float, champion_value: float | None,
            cfg: "PromoteConfig") -> tuple[str, str]:
    if champion is None:
        return "promoted", "there was no champion before"
    if str(champion.version) == str(challenger.version):
        return "already-champion", "already the champion"
    if champion_value is None:
        # Not an error: the pipeline's last step must not fail because the evaluation set changed
        # since the champion was registered. The promote step does not re-evaluate: it is a CPU
        # task, a full evaluation belongs on the GPU pool, and the champion's evaluation settings
        # (resolution, window) are not recorded with it. The champion stays; the reason says how
        # to compare.
        manifest = challenger.tags.get(TAG_MANIFEST, "")
        champion_manifest = champion.tags.get(TAG_MANIFEST, "")
        return "not-comparable", (
            f"champion v{champion.version} kept: it has no '{cfg.metric}' measured on the challenger's "
            f"evaluation manifest (sha256 '{manifest[:12] or 'unknown'}'; the champion's: "
            f"'{champion_manifest[:12] or 'unknown'}'). Compare both on one manifest (`dakd evaluate "
            f"--model models:/{challenger.name}@{CHAMPION} --model models:/{challenger.name}/{challenger.version} "
            f"--manifest {challenger.tags.get('eval_manifest') or 'URI'}`) and move the alias by hand "
            "if the challenger wins")
    gain = value - champion_value
    versus = f"{cfg.metric} {value:.4f} vs champion v{champion.version} {champion_value:.4f}: gain {gain:+.4f}"
    # A tie (or a gain below min_gain) never moves the champion, even with min_gain=0.
    if gain <= 0 or gain + _GAIN_TOLERANCE < cfg.min_gain:
        return "rejected", f"{versus}, needs > 0 and >= {cfg.min_gain}"
    return "promoted", f"{versus} >= {cfg.min_gain}"


LOCK_SUFFIX = ".promotion-lock"
TAG_LOCK_HOLDER = "dakd.lock_holder"


@contextlib.contextmanager
def _promotion_lock(client, name: str, timeout_s: float, stale_s: float):
    """Hold the promotion lock of `name`: a registered model `<name>.promotion-lock`.

    The registry has no compare-and-set on aliases, but creating a registered model is atomic
    (its name is the primary key on every backend), so exactly one promoter can create the lock
    model; the others wait and retry. The lock is deleted on release. A lock older than `stale_s`
    belonged to a promoter that died inside its few-second critical section and is broken (the
    holder tag is re-read first; two waiters breaking the same dead lock at once could still
    both proceed, which needs a crash and a three-way race).
    """
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                lock, tags={TAG_LOCK_HOLDER: holder},
                description=f"transient lock of `dakd promote` on {name}; deleted when the promotion ends")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        seen = _lock_holder(client, lock, stale_s)
        if seen is not None and seen[1]:
            current = _lock_holder(client, lock, stale_s)
            if current is not None and current[0] == seen[0]:
                _delete_quietly(client, lock)
            continue
        if time.monotonic() > deadline:
            who = f"held by {seen[0]}" if seen else "held"
            raise DakdError(
                f"{name}: the promotion lock {lock} is {who}; waited {timeout_s:.0f} s. If no promotion "
                f"is running, delete the registered model {lock}")
        time.sleep(random.uniform(0.05, 0.25))
    try:
        yield
    finally:
        current = _lock_holder(client, lock, stale_s)
        if current is not None and current[0] == holder:  # never release a lock broken and re-taken
            _delete_quietly(client, lock)


def _lock_holder(client, lock: str, stale_s: float) -> tuple[str, bool] | None:
    """(holder, stale) of the lock model, None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(lock)
    except MlflowException:
        return None
    age_s = time.time() - (model.creation_timestamp or 0) / 1000
    return model.tags.get(TAG_LOCK_HOLDER, ""), age_s > stale_s


def _delete_quietly(client, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException:
        pass  # another promoter deleted it first


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
