"""MLflow runs for pipeline stages: one run per stage, nested under the pipeline's parent run.

Where runs go
  ``tracking_uri()``: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlruns.db`` (MLflow
  3.17 refuses the file store by default). The experiment is the ``experiment`` argument, else
  ``MLFLOW_EXPERIMENT_NAME``, else ``dakd``; a new experiment gets its artifact location from
  ``DAKD_MLFLOW_ARTIFACT_ROOT`` or ``MLFLOW_ARTIFACT_ROOT``, else ``<sqlite db dir>/mlartifacts``
  (MLflow's own default is ``./mlartifacts`` relative to whatever the working directory is).
  With a remote tracking server and no root set, the server's default applies.

Nesting
  The parent run is, in order: the run already active in this process; ``MLFLOW_RUN_ID`` (the
  platform injected a run: MLflow would *resume* it as the stage's own run, so it is taken out of
  the environment and the stage nests under it instead; it is put back afterwards);
  ``DAKD_PARENT_RUN_ID`` (set by the pipeline's first task). A stage run with a parent is created
  in the parent's experiment, because the MLflow UI shows nesting only within one experiment.

What a stage run records
  Name: ``<stage>-<DAKD_RUN_LABEL>`` (``pretrain-teacher``, ``adapt-student``, ``distill-student-c``)
  when the calling pipeline task set a label, else the stage. Params: the config flattened to
  dotted keys (``optim.lr``), with secrets redacted (see ``redact``). Tags: ``dakd.stage``,
  ``dakd.kfp_run_id`` (``DAKD_KFP_RUN_ID``), ``dakd.kfp_task`` (``DAKD_KFP_TASK``), those of
  ``DAKD_RUN_TAGS`` (``dakd.role``, ``dakd.method``, ``dakd.paradigm``), the parent run's
  ``INHERITED_TAGS`` (``dakd.dataset_pair``, ...), ``dakd.git_commit`` and
  ``mlflow.source.git.commit`` (``DAKD_GIT_COMMIT`` or ``git rev-parse HEAD``). System metrics
  (``system/...``: CPU, memory, disk, network) when ``psutil`` is installed, unless
  ``DAKD_SYSTEM_METRICS=0``; per-GPU utilisation, memory and power too where ``pynvml``
  (nvidia-ml-py, in the CUDA image: requirements/cuda.txt) imports and NVML finds a GPU.

Helpers (``log_metrics``, ``log_dict``, ...) log to the active run and raise ``DakdError`` when
there is none, so a stage that forgot ``stage_run`` fails loudly instead of losing its metrics.

Tracking-server outages (``http(s)://`` tracking URIs)
  Every call to the server ends within ``DAKD_MLFLOW_DEADLINE_S`` seconds (default 30): MLflow's
  HTTP retries are bounded to 3 attempts of ``(deadline - 2) / 3`` s each with 0 + 2 s of backoff,
  unless ``MLFLOW_HTTP_REQUEST_*`` are set explicitly. A stage refuses to start (exit 2, naming the
  URI with its password masked) when the server does not answer within the deadline
  (``check_reachable``). Mid-stage, metrics the server does not take are kept (``MetricOutbox``,
  written to the stage's output beside its checkpoints) and training goes on; the stage publishes
  its result, then sends the kept metrics, or, if the server still does not answer, fails with
  exit 2 after publishing, the metrics kept in its output (see docs/reliability.md).

Secrets
  Params, tags, ``log_text``, ``log_dict`` and text files given to ``log_bytes`` are masked by
  ``redact``: values under secret names, the exact values of secret-named environment variables,
  credentials inside URLs. A name is secret by how it ends (``*_PASSWORD``, ``*_TOKEN``,
  ``*_SECRET_ACCESS_KEY``), never because a word inside it looks like one: ``PWD`` is the working
  directory, and its value prefixes every path a run records.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dakd_core.errors import DakdError, Preempted, SetupError

DEFAULT_EXPERIMENT = "dakd"
REDACTED = "***"
# What the calling task says about a stage run (set by dakd_core.orchestration.context): the
# label completes the run name `<stage>-<label>` (`pretrain-teacher`, `distill-student-c`), the
# tags (a JSON object) say role, method, paradigm.
ENV_RUN_LABEL = "DAKD_RUN_LABEL"
ENV_RUN_TAGS = "DAKD_RUN_TAGS"
# Tags a stage run copies from its parent run: the pipeline run's dataset pair and paradigm, so
# that every child run can be filtered by them.
TAG_DATASET_PAIR, TAG_PARADIGM = "dakd.dataset_pair", "dakd.paradigm"
INHERITED_TAGS = (TAG_DATASET_PAIR, TAG_PARADIGM, "dakd.run_name")

# A name (environment variable, config key, tag, URL query parameter) denotes a secret when its
# words END in one of these sequences: `AWS_SECRET_ACCESS_KEY`, `MLFLOW_TRACKING_PASSWORD`,
# `HF_TOKEN`, `apiKey`, `db.password`. Only the end counts, so names that merely mention such a
# word stay ordinary: `SSH_AUTH_SOCK`, `TOKENIZERS_PARALLELISM`, `sort_keys`, `cache_key`,
# `secret_name` (the name of a Kubernetes secret, not its value).
_SECRET_TAILS = {
    ("password",), ("passwd",), ("passphrase",), ("secret",), ("token",), ("apikey",),
    ("credential",), ("credentials",), ("authorization",),
    ("api", "key"), ("secret", "key"), ("private", "key"), ("access", "key"), ("account", "key"),
    ("signing", "key"), ("encryption", "key"), ("master", "key"), ("session", "key"),
    # AWS_ACCESS_KEY_ID: not secret on its own, but it names the account a leaked secret opens.
    ("access", "key", "id"),
    # AZURE_STORAGE_CONNECTION_STRING and the like embed the account key.
    ("connection", "string"),
}
# `pwd` is a password only after a qualifier (`MYSQL_PWD`); alone it is the shell's working
# directory (`PWD`, and `OLDPWD` is one word), whose value prefixes every path a run records.
_QUALIFIED_TAILS = {("pwd",)}
# A secret-named variable's value is masked wherever it appears; shorter values ("1", "true",
# "us") would mask unrelated text, and no credential worth the name is that short.
_MIN_SECRET_LEN = 6
# AWS secret access keys: 40 characters of base64 alphabet, masked even when they reach a value
# without passing through a secret-named variable (pasted into a config field). '=' may precede
# one (`key=...`); after one it is base64 padding, i.e. the token is part of a longer string.
_AWS_SECRET_RE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_URL_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# name=value pairs of a URL's query string (`?X-Amz-Security-Token=...&X-Amz-Signature=...`); a
# presigned URL's signature is a credential too, though `signature` is no secret word elsewhere.
_URL_QUERY_RE = re.compile(r"(?P<sep>[?&;])(?P<name>[A-Za-z0-9_.~%-]+)=(?P<value>[^&#\s\"']*)")
# Artifacts logged from bytes that are text, masked like params (a report quotes model URIs).
_TEXT_SUFFIXES = (".md", ".txt", ".json", ".yaml", ".yml", ".csv", ".log", ".html")
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
_MAX_TAG_LEN = 8000


# ------------------------------------------------------------------------------ redaction


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)  # camelCase -> camel Case
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def _ends_secret(words: list[str]) -> bool:
    for tail in _SECRET_TAILS:
        if tuple(words[-len(tail):]) == tail:
            return True
    return any(len(words) > len(t) and tuple(words[-len(t):]) == t for t in _QUALIFIED_TAILS)


def is_secret_key(key: str) -> bool:
    """Whether a name denotes a secret: the whole name or one of its dotted parts ends in a secret
    word (``MLFLOW_TRACKING_PASSWORD``, ``api.key``, ``credentials.aws``); see ``_SECRET_TAILS``."""
    return _ends_secret(_words(key)) or any(_ends_secret(_words(part)) for part in key.split("."))


def _looks_like_aws_secret(token: str) -> bool:
    # Random base64 of 40 characters has ~16 upper- and ~16 lower-case letters. Git SHAs and hex
    # digests are single-case; an absolute path starts with '/', and relative paths are mostly
    # lower-case words: none of them is masked.
    if token.startswith("/") or token.endswith("/") or "//" in token:
        return False
    upper = sum(c.isupper() for c in token)
    lower = sum(c.islower() for c in token)
    digits = sum(c.isdigit() for c in token)
    return upper >= 5 and lower >= 5 and (digits >= 1 or "/" in token or "+" in token)


def _secret_env_values() -> list[str]:
    """Values of secret-named environment variables, longest first (so a secret containing another
    is masked whole).

    Iterates over a snapshot: MLflow's background threads may change os.environ meanwhile.
    """
    return sorted({v for k, v in dict(os.environ).items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LEN},
                  key=len, reverse=True)


def _secret_query_name(name: str) -> bool:
    return is_secret_key(name) or _words(name)[-1:] == ["signature"]


def redact_text(text: str) -> str:
    """``text`` with every credential inside it masked: the exact values of secret-named
    environment variables, the ``user:password@`` of URLs, secret-named URL query parameters, AWS
    key ids and AWS-secret-shaped tokens. Ordinary text (paths, ids, digests) is left intact."""
    for secret in _secret_env_values():
        text = text.replace(secret, REDACTED)
    text = _URL_USERINFO_RE.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    text = _URL_QUERY_RE.sub(
        lambda m: f"{m.group('sep')}{m.group('name')}={REDACTED}" if _secret_query_name(m.group("name")) else m.group(),
        text)
    text = _AWS_KEY_ID_RE.sub(REDACTED, text)
    return _AWS_SECRET_RE.sub(lambda m: REDACTED if _looks_like_aws_secret(m.group()) else m.group(), text)


def redact(key: str, value: Any) -> str:
    """The string MLflow may record for ``key=value``: the whole value is ``***`` when ``key``
    names a secret, else the value (JSON for non-strings) passed through ``redact_text``."""
    if is_secret_key(key):
        return REDACTED
    return redact_text(value if isinstance(value, str) else json.dumps(value, default=str))


def redact_data(data: Any) -> Any:
    """A JSON-like structure (dicts, lists, scalars) with secrets masked as ``redact`` does: values
    under secret-named keys become ``***``, strings are passed through ``redact_text``."""
    if isinstance(data, Mapping):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) else redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return redact_text(data) if isinstance(data, str) else data


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A pydantic model or (nested) mapping as ``{"a.b": leaf}``; lists stay leaves."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        raise DakdError(f"stage config must be a mapping or pydantic model, got {type(config).__name__}")
    flat: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(flatten(v, prefix=f"{name}."))
        else:
            flat[name] = v
    return flat


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def loggable_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """Flattened params as MLflow may record them: redacted, keys and values within its limits."""
    return {k[:250]: _clip(redact(k, v), _MAX_PARAM_LEN) for k, v in flat.items()}


# ------------------------------------------------------------------------------ server outages

ENV_DEADLINE = "DAKD_MLFLOW_DEADLINE_S"
DEFAULT_DEADLINE_S = 30.0


def deadline_seconds() -> float:
    """The longest one call to a tracking server may take, retries included (DAKD_MLFLOW_DEADLINE_S)."""
    from dakd_core.storage import env_number

    return env_number(ENV_DEADLINE, DEFAULT_DEADLINE_S, float, 3, 3600)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_http_retries() -> None:
    """MLflow's HTTP settings (where not set explicitly) for calls that end within the deadline:
    urllib3 sleeps 0 s before the first retry and 2 * backoff_factor before the second, so 3
    attempts of (deadline - 2) / 3 s take at most the deadline. MLflow's own defaults (7 retries,
    backoff up to 64 s, 120 s timeout) stalled a stage ~8 min per call when the server died."""
    timeout = max(1, int((deadline_seconds() - 2) / 3))
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))):
        os.environ.setdefault(name, value)


def check_reachable(uri: str | None = None) -> None:
    """DakdError naming the (masked) URI when a tracking server does not answer within the deadline.

    Any HTTP answer below 500 counts (an authenticating server answers 401 to /health without
    credentials). Not a server URI (sqlite, file): nothing to check."""
    import urllib.error
    import urllib.request

    uri = uri or tracking_uri()
    if not is_server(uri):
        return
    bound_http_retries()
    deadline = deadline_seconds()
    # urllib would take user:password@ for part of the host name
    url = _URL_USERINFO_RE.sub(lambda m: m.group("scheme"), uri).rstrip("/") + "/health"
    end = time.monotonic() + deadline
    reason = "no answer"
    while (left := end - time.monotonic()) > 0:
        try:
            with urllib.request.urlopen(url, timeout=min(left, 5.0)):
                return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
            reason = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    raise DakdError(f"MLflow tracking server {redact_text(uri)} did not answer within {deadline:g} s ({reason}): "
                    f"start it, point MLFLOW_TRACKING_URI at one that answers, or raise {ENV_DEADLINE}")


def server_unavailable(e: BaseException) -> bool:
    """Whether an exception of an MLflow call means the tracking server did not answer."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(e, (MlflowException, requests.RequestException, OSError)) and is_server(tracking_uri())


class MetricOutbox:
    """The metrics of one run, sent as they come while the tracking server answers; while it does
    not, kept (in order, with their steps and times) and re-sent together, at most once per
    deadline so that a dead server costs training one bounded call per deadline, not per step."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: list[dict] = []
        self._retry_at = 0.0
        self.failure: str | None = None  # why the last send failed

    def log(self, metrics: Mapping[str, Any], step: int) -> bool:
        """Send (or keep) `metrics` at `step`; True when nothing is kept any more."""
        now = int(time.time() * 1000)
        for name, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise DakdError(f"metric '{name}' is not a number: {value!r}") from None
            self.pending.append({"key": name, "value": number, "step": step, "timestamp": now})
        if time.monotonic() < self._retry_at:
            return False
        return self.flush()

    def flush(self) -> bool:
        """Try to send every kept metric now; True when none is left."""
        from mlflow.entities import Metric

        import mlflow

        try:
            client = mlflow.MlflowClient(tracking_uri())
            for i in range(0, len(self.pending), 1000):  # MLflow's limit per batch
                batch = self.pending[i:i + 1000]
                client.log_batch(self.run_id, metrics=[Metric(m["key"], m["value"], m["timestamp"], m["step"])
                                                       for m in batch])
            self.pending = []
            self.failure = None
            return True
        except Exception as e:
            if not server_unavailable(e):
                raise
            if self.failure is None:
                print(f"dakd: MLflow tracking server {redact_text(tracking_uri())} did not take metrics "
                      f"({type(e).__name__}); training goes on, metrics are kept and re-sent", file=sys.stderr,
                      flush=True)
            self.failure = redact_text(f"{type(e).__name__}: {e}")[:300]
            self._retry_at = time.monotonic() + deadline_seconds()
            return False

    def end_if_running(self) -> None:
        """Mark the run FAILED if the server still has it RUNNING (its process ended while the
        server did not answer); called once its kept metrics are sent by a later attempt."""
        import mlflow

        client = mlflow.MlflowClient(tracking_uri())
        if client.get_run(self.run_id).info.status == "RUNNING":
            client.set_terminated(self.run_id, "FAILED")

    def to_json(self) -> bytes:
        return json.dumps({"mlflow_run_id": self.run_id, "tracking_uri": redact_text(tracking_uri()),
                           "metrics": self.pending}, indent=1).encode()


# ------------------------------------------------------------------------------ where runs go


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a sqlite database in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts (None: leave it to the tracking server)."""
    explicit = os.environ.get("DAKD_MLFLOW_ARTIFACT_ROOT") or os.environ.get("MLFLOW_ARTIFACT_ROOT")
    if explicit:
        return explicit.rstrip("/")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


_UNWRITABLE_HINT = "fix its permissions, point {env} at a writable location, or pass --no-mlflow where the command has it"


def _local_path(uri: str) -> Path | None:
    """The local directory of a file:// URI or plain path; None for servers and other schemes."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri and not uri.startswith(("sqlite:", "databricks", "postgresql", "mysql")):
        return Path(uri)
    return None


def _writable_dir(path: Path, what: str, env: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".dakd-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DakdError(f"{what} {path} cannot be written ({e.strerror or e}): "
                        + _UNWRITABLE_HINT.format(env=env)) from None


def check_writable(uri: str, artifact_location: str | None = None) -> None:
    """DakdError naming the path when a local MLflow store cannot be written; SetupError naming
    the location when a remote artifact store cannot (`check_artifact_store`).

    Checked before the first write: MLflow retries opening an unwritable sqlite database for
    minutes before it raises, and a read-only artifact directory or an S3 bucket without the
    credentials would fail only at the end of a stage, after the whole training. A sqlite URI
    with query options (`?mode=ro&uri=true`) is left to sqlite itself (dakd_core.cli names its
    error)."""
    env = "MLFLOW_TRACKING_URI"
    if uri.startswith("sqlite:///") and "?" not in uri:
        db = Path(uri[len("sqlite:///"):])
        if db.exists():
            try:
                with open(db, "r+b"):
                    pass
            except OSError as e:
                raise DakdError(f"MLflow tracking database {db} cannot be written ({e.strerror or e}): "
                                + _UNWRITABLE_HINT.format(env=env)) from None
        else:
            _writable_dir(db.parent, "directory of the MLflow tracking database", env)
    elif (local := _local_path(uri)) is not None:
        _writable_dir(local, "MLflow tracking directory", env)
    if not artifact_location:
        return
    if (local := _local_path(artifact_location)) is not None:
        _writable_dir(local, "MLflow artifact directory", "DAKD_MLFLOW_ARTIFACT_ROOT")
    elif not artifact_location.startswith("file:"):
        check_artifact_store(artifact_location)


def _artifact_store_hint(location: str) -> str:
    """What decides whether MLflow can write artifacts at `location`, for an error message."""
    if location.startswith("s3://"):
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        where = f"endpoint {endpoint}" if endpoint else "AWS's endpoint: no MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL"
        return (f"this process writes there itself ({where}) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: set "
                "MLFLOW_S3_ENDPOINT_URL and the AWS_* credentials, and create the bucket (on the cluster: secret "
                "dakd-s3, k8s/secrets/README.md, and the bucket Job of k8s/object-store)")
    if location.startswith("mlflow-artifacts:"):
        return (f"the tracking server {redact_text(tracking_uri())} writes there for this process: check its "
                "--artifacts-destination and its own store credentials (on the cluster: secret dakd-s3 of the MLflow "
                "server, k8s/mlflow)")
    return "check the credentials MLflow uses for that scheme in this process's environment"


def check_artifact_store(location: str) -> None:
    """SetupError naming `location` when MLflow cannot write a remote artifact store there.

    One small object is written with MLflow's own client for the location (s3://: boto3 with
    MLFLOW_S3_ENDPOINT_URL and the AWS_* credentials; mlflow-artifacts:: the tracking server's
    proxy) and deleted again: a missing or wrong credential, endpoint or bucket then fails the
    task that opens the run, before its work, instead of the artifact upload at the end of a
    stage after the whole training. Deleting the probe is best effort: a store that lets this
    process write but not delete keeps a few bytes rather than failing the pipeline."""
    import uuid

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    name = f".dakd-write-probe-{uuid.uuid4().hex}"
    try:
        repo = get_artifact_repository(location)
        with tempfile.TemporaryDirectory(prefix="dakd-probe-") as tmp:
            probe = Path(tmp) / name
            probe.write_bytes(b"dakd: artifact store write probe\n")
            repo.log_artifact(str(probe))
    except Exception as e:
        raise SetupError(redact_text(f"MLflow artifact store {location} cannot be written ({type(e).__name__}: "
                                     f"{str(e)[:400]}): {_artifact_store_hint(location)}")) from None
    with contextlib.suppress(Exception):
        repo.delete_artifacts(name)


def ensure_experiment(name: str | None = None) -> str:
    """The id of experiment ``name`` (default: MLFLOW_EXPERIMENT_NAME or 'dakd'), created if new."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    uri = tracking_uri()
    check_writable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise DakdError(f"MLflow experiment '{name}' is deleted; restore it or choose another name")
        check_writable(uri, found.artifact_location)
        return found.experiment_id
    root = _artifact_root(uri)
    check_writable(uri, root)
    try:
        experiment_id = client.create_experiment(name, artifact_location=root)
    except MlflowException:
        # Another stage created it in the meantime (parallel KFP tasks start together).
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        experiment_id = found.experiment_id
    if root is None:  # the tracking server chose where its artifacts go: checked now
        check_writable(uri, client.get_experiment(experiment_id).artifact_location)
    return experiment_id


def _torch_build() -> str:
    """torch.__version__ where torch is loaded (every training stage): its local label names the
    build (`+cu130`, `+cpu`), which the distribution's metadata lacks for PyPI's CUDA wheel
    (`2.13.0`); elsewhere that metadata, so that no task imports torch for a tag."""
    import importlib.metadata

    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _git_commit() -> str:
    commit = os.environ.get("DAKD_GIT_COMMIT", "").strip()
    if commit:
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""  # not a checkout (e.g. inside the container image): no commit tag


def _system_metrics() -> bool:
    """Whether stage runs log system metrics. MLflow's monitor needs psutil (CPU, memory, disk,
    network) and adds a GPU monitor by itself when pynvml imports and NVML initialises; without
    a GPU it skips that one and logs the rest, so the CUDA image needs nothing more than the
    package."""
    if os.environ.get("DAKD_SYSTEM_METRICS", "1") == "0":
        return False
    return importlib.util.find_spec("psutil") is not None


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[str | None]:
    """Take ``name`` out of the environment for the block (MLflow would resume MLFLOW_RUN_ID)."""
    value = os.environ.pop(name, None)
    try:
        yield value
    finally:
        if value is not None:
            os.environ[name] = value


def _env_run_tags() -> dict[str, str]:
    raw = os.environ.get(ENV_RUN_TAGS, "")
    if not raw:
        return {}
    try:
        tags = json.loads(raw)
    except ValueError:
        tags = None
    if not isinstance(tags, dict):
        raise DakdError(f"{ENV_RUN_TAGS} must be a JSON object of tags, got {raw[:200]!r}")
    return {str(k): "" if v is None else str(v) for k, v in tags.items()}


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Any = None,
    tags: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    *,
    params: Any = None,
    run_name: str | None = None,
):
    """Run the block inside an MLflow run for ``stage``; yields ``mlflow.ActiveRun``.

    ``config`` (pydantic model or mapping; ``params`` is accepted as another name for it) is
    logged as flattened, redacted params. An exception in the block marks the run FAILED.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if config is not None and params is not None:
        raise DakdError("stage_run: pass the config as `config` or `params`, not both")
    source = config if config is not None else params
    flat = flatten(source) if source is not None else {}
    uri = tracking_uri()
    check_reachable(uri)  # an unreachable server: exit 2 within the deadline, not minutes of retries
    mlflow.set_tracking_uri(uri)
    # MLFLOW_RUN_ID stays out of the environment until the stage run has ended: end_run() would
    # delete it, and the next stage in this process must still find the platform's run.
    with _without_env("MLFLOW_RUN_ID") as platform_run_id:
        active = mlflow.active_run()
        parent_id = (active.info.run_id if active else None) or platform_run_id or (
            os.environ.get("DAKD_PARENT_RUN_ID") or None)
        inherited: dict[str, str] = {}
        if parent_id is None:
            experiment_id = ensure_experiment(experiment)
        else:
            try:
                parent = mlflow.MlflowClient(uri).get_run(parent_id)
            except MlflowException as e:
                raise DakdError(f"MLflow parent run {parent_id!r} not found at "
                                f"{redact('uri', uri)}: {e.message}") from None
            experiment_id = parent.info.experiment_id
            # ensure_experiment checks the store of a run without a parent; this one writes to the parent's
            check_writable(uri, mlflow.MlflowClient(uri).get_experiment(experiment_id).artifact_location)
            inherited = {k: v for k, v in parent.data.tags.items() if k in INHERITED_TAGS}
        label = os.environ.get(ENV_RUN_LABEL, "")
        run_tags = {
            **inherited,
            "dakd.stage": stage,
            "dakd.kfp_run_id": os.environ.get("DAKD_KFP_RUN_ID", ""),
            "dakd.kfp_task": os.environ.get("DAKD_KFP_TASK", ""),
            # the torch build that trained or ran the stage (`2.13.0+cu130` in the CUDA image,
            # `2.13.0+cpu` in the CPU one)
            "dakd.torch": _torch_build(),
            **_env_run_tags(),
        }
        commit = _git_commit()
        if commit:
            run_tags.update({"dakd.git_commit": commit, "mlflow.source.git.commit": commit})
        run_tags.update(dict(tags or {}))
        run_tags = {k: _clip(redact(k, v), _MAX_TAG_LEN) for k, v in run_tags.items() if v != ""}
        run = mlflow.start_run(
            experiment_id=experiment_id,
            # `pretrain-teacher`, not two runs called `pretrain`: the label comes from the task
            # that called the stage (the train loops only know their stage).
            run_name=run_name or (f"{stage}-{label}" if label else stage),
            nested=active is not None,
            parent_run_id=parent_id if active is None else None,
            tags=run_tags,
            log_system_metrics=_system_metrics(),
        )
        try:
            if flat:
                mlflow.log_params(loggable_params(flat))
            yield run
        except Preempted:  # stopped by a signal, resumable: KILLED, not FAILED
            _end_run("KILLED")
            raise
        except BaseException:
            _end_run("FAILED")
            raise
        _end_run("FINISHED")


def _end_run(status: str) -> None:
    """End the active run; a tracking server that does not answer leaves it RUNNING there (said on
    stderr) instead of replacing the stage's own outcome with its error."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as e:
        if not server_unavailable(e):
            raise
        print(f"dakd: MLflow tracking server {redact_text(tracking_uri())} did not answer: the run stays "
              f"RUNNING there instead of {status} ({type(e).__name__})", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ helpers


def _require_run():
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise DakdError("no active MLflow run: log inside `with dakd_core.tracking.stage_run(...)`")
    return run


def _check_artifact_file(artifact_file: str) -> str:
    parts = artifact_file.replace("\\", "/").split("/")
    if not artifact_file or artifact_file.startswith("/") or ".." in parts or "" in parts:
        raise DakdError(f"invalid MLflow artifact path {artifact_file!r}: use a relative path")
    return artifact_file


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log numeric metrics (ints, floats, numpy/torch scalars) to the active run."""
    import mlflow

    _require_run()
    values = {}
    for name, value in metrics.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise DakdError(f"metric '{name}' is not a number: {value!r}") from None
    mlflow.log_metrics(values, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set (redacted) tags on the active run."""
    import mlflow

    _require_run()
    mlflow.set_tags({k: _clip(redact(k, v), _MAX_TAG_LEN) for k, v in tags.items()})


def log_text(text: str, artifact_file: str) -> None:
    """A text artifact, secrets masked as in params (reports and logs quote URIs and configs)."""
    import mlflow

    _require_run()
    mlflow.log_text(redact_text(text), _check_artifact_file(artifact_file))


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """A JSON (or YAML, by extension) artifact, secrets masked as in params."""
    import mlflow

    _require_run()
    mlflow.log_dict(redact_data(dict(data)), _check_artifact_file(artifact_file))


def log_figure(figure: Any, artifact_file: str) -> None:
    """A matplotlib (or plotly) figure as an image artifact."""
    import mlflow

    _require_run()
    mlflow.log_figure(figure, _check_artifact_file(artifact_file))


def log_artifact(local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Upload a local file or directory under ``artifact_path`` of the active run."""
    import mlflow

    _require_run()
    if not Path(local_path).exists():
        raise DakdError(f"artifact to log not found: {local_path}")
    mlflow.log_artifact(str(local_path), _check_artifact_file(artifact_path) if artifact_path else None)


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Raw bytes (e.g. a PNG or a model file read from the store) as artifact ``artifact_file``;
    text files (by extension: reports, JSON) have their secrets masked as in params."""
    import mlflow

    _require_run()
    artifact_file = _check_artifact_file(artifact_file)
    if artifact_file.lower().endswith(_TEXT_SUFFIXES):
        try:
            data = redact_text(data.decode("utf-8")).encode("utf-8")
        except UnicodeDecodeError:
            pass  # not text after all: logged as it is
    directory, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="dakd-artifact-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), directory or None)
