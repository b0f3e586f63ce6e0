"""Object store over ``file://`` and ``s3://`` with one interface (see docs/ARCHITECTURE.md).

URIs
  ``file:///abs/dir`` or a plain path (``/abs/dir``; a relative path is resolved against the
  working directory) and ``s3://bucket/prefix``. URIs are used verbatim: no percent-encoding.

Keys
  ``/``-separated relative paths. ``..``/``.`` segments, absolute keys, empty segments (``a//b``,
  trailing ``/``) and backslashes raise ``StoreError`` naming the key, so a key can never escape
  the store's root on either backend.

Atomicity
  ``put_bytes``/``put_file`` on ``file://`` write a temporary file in the destination directory
  (name ``.<name>.<random>.dakd-tmp``, hidden from ``list``) and ``os.replace`` it into place, so
  a reader sees the old object or the whole new one, never a prefix. An S3 PUT (single or
  multipart) is atomic per object. ``get_file`` downloads the same way into the local directory.

Conditional writes (compare-and-set, what writer leases are built on)
  ``read_versioned(key)`` returns the bytes and a version token; ``put_if(key, data, version)``
  writes only if the object is still at ``version`` (``None``: only if absent) and returns the
  new token, or ``None`` when another writer got there first. S3 does it server-side
  (``If-Match``/``If-None-Match: *`` on PUT, ETags as tokens); ``file://`` compares the sha256 of
  the content under an exclusive ``flock`` on ``.<name>.dakd-lock`` beside the object (hidden
  from ``list``), then writes atomically as above. Keys ending in ``.dakd-lease`` (writer leases)
  are hidden from ``list`` too.

S3 client
  boto3 with no endpoint or credentials passed in code: boto3 (>= 1.28) reads ``AWS_ENDPOINT_URL``
  / ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``
  etc. itself. Retries use botocore's ``standard`` mode with ``DAKD_S3_MAX_ATTEMPTS`` attempts in total
  (first try included; default 8); timeouts come from ``DAKD_S3_CONNECT_TIMEOUT`` / ``DAKD_S3_READ_TIMEOUT`` seconds
  (defaults 5 / 20: the read timeout is the longest silence within one answer, not a transfer's length).
  Deadline: every S3 request (one API call with its retries; a multipart transfer's parts and a
  listing's pages are requests of their own) ends within ``DAKD_S3_DEADLINE_S`` seconds (default
  60): a retry is started only if it, with its longest backoff, connect and read timeouts, still
  fits, otherwise the call fails with a StoreError naming the URI, the endpoint, the attempts and
  the last error (a silent endpoint used to hold a stage for 8 x 60 s with no output). One client is cached per process and per S3-relevant environment (so a test
  that points ``AWS_ENDPOINT_URL`` elsewhere gets a new client; a forked worker builds its own).
  Every retried attempt is counted in ``retry_count()``: botocore numbers the attempts of one call
  in the request context (``retries.attempt``, the source of ``ResponseMetadata.RetryAttempts``),
  and a ``response-received`` hook adds one per attempt after the first, including attempts
  that ended in a connection error, which ``RetryAttempts`` would not show.
  Credentials are never logged or put in error messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from dakd_core.errors import ConfigError, StoreError

_TMP_SUFFIX = ".dakd-tmp"
_LOCK_SUFFIX = ".dakd-lock"
# Writer-lease records (dakd_core/lease.py) are bookkeeping about a location, not its content:
# list() leaves them out on both backends, so copies and comparisons of outputs ignore them.
LEASE_SUFFIX = ".dakd-lease"
# S3's maximum page size; a module constant so tests can force several pages with few objects.
_LIST_PAGE_SIZE = 1000
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# mkstemp creates 0600 files; published objects get the usual umask-derived mode instead.
# (Read once at import: os.umask can only be read by setting it.)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# --------------------------------------------------------------------------------------- keys


def _check_key(key: str, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative ``/``-separated path, else raise StoreError."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid {what} {key!r}: must be a non-empty string")
    if "\\" in key:
        raise StoreError(f"invalid {what} {key!r}: backslashes are not allowed")
    if key.startswith("/"):
        raise StoreError(f"invalid {what} {key!r}: must be relative, not absolute")
    for segment in key.split("/"):
        if segment == "":
            raise StoreError(f"invalid {what} {key!r}: empty path segment")
        if segment in (".", ".."):
            raise StoreError(f"invalid {what} {key!r}: '{segment}' segments are not allowed")
    return key


# Public for callers that turn a URI into a key themselves (manifest URIs checked against a store).
check_key = _check_key


def _check_prefix(prefix: str) -> str:
    """A list prefix: empty, a key, or a key followed by one trailing '/'."""
    if prefix == "":
        return prefix
    _check_key(prefix[:-1] if prefix.endswith("/") else prefix, what="prefix")
    return prefix


# --------------------------------------------------------------------------------------- base


class ObjectStore(ABC):
    """A root URI under which objects are addressed by relative keys (one subclass per backend)."""

    uri: str

    def url(self, key: str) -> str:
        """Full URI of ``key``."""
        return f"{self.uri.rstrip('/')}/{_check_key(key)}"

    def child(self, prefix: str) -> ObjectStore:
        """The store rooted at ``url(prefix)``."""
        return open_store(self.url(prefix))

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` atomically; return ``url(key)``."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; StoreError naming the URI if it is missing."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> str:
        """Upload the local file ``path`` to ``key`` atomically; return ``url(key)``."""

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Download ``key`` to the local ``path`` (atomically replaced); StoreError if missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object (not merely a prefix) is stored at ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under the root starting with ``prefix``, relative to the root, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing object is not an error (as on S3)."""

    def write_lock(self, key: str):
        """A context holding the lock that `put_if` of `key` takes: on file:// an exclusive flock,
        so checks and writes made inside it cannot interleave with a conditional write of `key`.
        S3 has no such lock: a no-op there."""
        return contextlib.nullcontext()

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, version token) of ``key``, or None if there is no object."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        """Write ``data`` at ``key`` only if the object is still at ``version`` (None: only if
        there is no object); the new version token, or None if the condition failed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectStore) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)


def _check_local_source(path: str | os.PathLike) -> Path:
    src = Path(path)
    if not src.is_file():
        raise StoreError(f"local file to upload not found: {src}")
    return src


def _atomic_local_write(dest: Path, write: Any, uri: str) -> None:
    """Create ``dest`` atomically: ``write(tmp_path)`` fills a temp file next to it, then rename.

    The temp file lives in the destination directory so ``os.replace`` never crosses a
    filesystem (which would make it a non-atomic copy).
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX)
    except OSError as e:
        raise StoreError(f"cannot write {uri}: {e.strerror or e}") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise StoreError(f"cannot write {uri}: {e.strerror or e}") from None
        raise


def _write_bytes_fsync(data: bytes):
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            # Without fsync a crash right after the rename can leave an empty file in place.
            os.fsync(f.fileno())

    return write


# --------------------------------------------------------------------------------------- file://


class FileStore(ObjectStore):
    """A directory on the local filesystem (or a mounted volume/PVC)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.abspath(root))
        posix = self.root.as_posix()
        self.uri = "file:///" if posix == "/" else "file://" + posix

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StoreError(f"put_bytes({self.url(key)}) needs bytes, got {type(data).__name__}")
        _atomic_local_write(self._path(key), _write_bytes_fsync(bytes(data)), self.url(key))
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreError(f"object not found: {self.url(key)}") from None
        except OSError as e:
            raise StoreError(f"cannot read {self.url(key)}: {e.strerror or e}") from None

    def put_file(self, key: str, path: str | os.PathLike) -> str:
        src = _check_local_source(path)
        _atomic_local_write(self._path(key), lambda tmp: shutil.copyfile(src, tmp), self.url(key))
        return self.url(key)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"object not found: {self.url(key)}")
        _atomic_local_write(Path(path), lambda tmp: shutil.copyfile(src, tmp), str(path))

    def exists(self, key: str) -> bool:
        # A directory is a prefix, not an object (same as S3).
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by string prefix (S3 rules).
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.endswith((_TMP_SUFFIX, _LOCK_SUFFIX, LEASE_SUFFIX)):
                    continue  # an in-flight atomic write, a conditional write's lock, a lease: not objects
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # deleting a missing object is a no-op, as on S3
        except OSError as e:
            raise StoreError(f"cannot delete {self.url(key)}: {e.strerror or e}") from None

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        for attempt in range(2):
            try:
                data = self.get_bytes(key)
                break
            except StoreError:
                if not self._path(key).exists():
                    return None
                if attempt:
                    raise  # there, but unreadable (a directory...)
                # created between the read and exists() (a racing writer's first put_if): read it now
        return data, hashlib.sha256(data).hexdigest()

    def write_lock(self, key: str):
        return self._locked(self._path(key), self.url(key))

    def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        with self.write_lock(key):
            current = self.read_versioned(key)
            if (current[1] if current else None) != version:
                return None
            self.put_bytes(key, data)
        return hashlib.sha256(bytes(data)).hexdigest()

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path, uri: str):
        """An exclusive flock on a sidecar file: serialises conditional writes of one object
        across threads and processes (each open() is its own lock holder)."""
        lock_path = path.with_name(f".{path.name}{_LOCK_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise StoreError(f"cannot lock {uri} for a conditional write: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


# --------------------------------------------------------------------------------------- s3://

_client_lock = threading.Lock()
_clients: dict[tuple, Any] = {}
_retry_lock = threading.Lock()
_retries = 0

# Environment that changes which S3 endpoint/identity/settings a client uses. Only the key id
# (not the secret) is part of the cache key; the key is held in memory and never logged.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "DAKD_S3_MAX_ATTEMPTS", "DAKD_S3_CONNECT_TIMEOUT", "DAKD_S3_READ_TIMEOUT", "DAKD_S3_DEADLINE_S",
)


def retry_count() -> int:
    """How many S3 request attempts were retries, summed over this process so far."""
    return _retries


def reset_client_cache() -> None:
    """Forget cached S3 clients (the next call builds one from the current environment)."""
    with _client_lock:
        _clients.clear()


def _count_retry(context: dict | None = None, **_: Any) -> None:
    global _retries
    attempt = ((context or {}).get("retries") or {}).get("attempt", 1)
    if attempt > 1:
        with _retry_lock:
            _retries += 1


def env_number(name: str, default: float, cast: type, minimum: float, maximum: float | None = None) -> Any:
    """Environment variable `name` as `cast` (default when unset or empty), or a ConfigError naming it."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not a valid {cast.__name__}") from None
    if not value >= minimum or (maximum is not None and not value <= maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"environment variable {name}={raw!r} must be {bound}")
    return value


class _DeadlineExceeded(Exception):
    """A retry would not fit in DAKD_S3_DEADLINE_S (raised from botocore's needs-retry event)."""

    def __init__(self, attempts: int, elapsed: float, deadline: float, endpoint: str, last: str):
        super().__init__(f"no answer within the {deadline:g} s deadline (DAKD_S3_DEADLINE_S) from {endpoint}: "
                         f"{attempts} attempt(s) in {elapsed:.1f} s, the last: {last}")


class _Deadline:
    """botocore event handlers bounding each S3 call by the deadline (see the module docstring).

    `start` (before-call) stamps the call's request context; `check` (needs-retry, registered
    before botocore's retry handler) raises _DeadlineExceeded when botocore would retry but the
    next attempt could not finish in time. Retryability is judged by botocore's own standard
    conditions, so a 404 or 403 is never turned into a deadline error."""

    # botocore's standard backoff: rand(0, 1) * min(base * 2 ** (attempt - 1), 20 s), base <= 1 s.
    MAX_BACKOFF_S = 20.0

    def __init__(self, deadline: float, connect: float, read: float, max_attempts: int, endpoint: str):
        from botocore.retries.standard import RetryEventAdapter, StandardRetryConditions

        self.deadline, self.attempt_s, self.endpoint = deadline, connect + read, endpoint
        self._adapter, self._conditions = RetryEventAdapter(), StandardRetryConditions(max_attempts=max_attempts)

    def start(self, context: dict | None = None, **_: Any) -> None:
        if context is not None:
            context["dakd_started"] = time.monotonic()

    def check(self, **kwargs: Any) -> None:
        started = kwargs["request_dict"]["context"].get("dakd_started")
        retry = self._adapter.create_retry_context(**kwargs)
        if started is None or not self._conditions.is_retryable(retry):
            return None  # botocore decides (no retry, or no stamp to judge by)
        elapsed = time.monotonic() - started
        backoff = min(2.0 ** (retry.attempt_number - 1), self.MAX_BACKOFF_S)
        if elapsed + backoff + self.attempt_s > self.deadline:
            if retry.caught_exception is not None:
                last = f"{type(retry.caught_exception).__name__}: {retry.caught_exception}"
            else:
                last = f"HTTP {retry.http_response.status_code}" if retry.http_response is not None else "?"
            raise _DeadlineExceeded(retry.attempt_number, elapsed, self.deadline, self.endpoint, last)
        return None


def _s3_client():
    """The process's S3 client for the current environment (thread-safe, built once)."""
    cache_key = (os.getpid(),) + tuple(os.environ.get(k) for k in _CLIENT_ENV)
    client = _clients.get(cache_key)
    if client is not None:
        return client
    with _client_lock:
        client = _clients.get(cache_key)
        if client is None:
            import boto3
            from botocore.config import Config

            attempts = env_number("DAKD_S3_MAX_ATTEMPTS", 8, int, 1)
            connect = env_number("DAKD_S3_CONNECT_TIMEOUT", 5, float, 0.001)
            read = env_number("DAKD_S3_READ_TIMEOUT", 20, float, 0.001)
            deadline = env_number("DAKD_S3_DEADLINE_S", 60, float, 0.001)
            if connect + read > deadline:
                raise ConfigError(
                    f"DAKD_S3_CONNECT_TIMEOUT + DAKD_S3_READ_TIMEOUT ({connect:g} + {read:g} s) exceed "
                    f"DAKD_S3_DEADLINE_S ({deadline:g} s): not even one attempt would fit")
            config = Config(
                # total_max_attempts counts the first try (botocore's "max_attempts" key would
                # count retries only), matching the meaning of AWS_MAX_ATTEMPTS.
                retries={"mode": "standard", "total_max_attempts": attempts},
                connect_timeout=connect,
                read_timeout=read,
            )
            # A fresh Session: boto3's default session is not thread-safe to create clients from.
            client = boto3.session.Session().client("s3", config=config)
            client.meta.events.register("response-received.s3.*", _count_retry)
            bound = _Deadline(deadline, connect, read, attempts, client.meta.endpoint_url)
            client.meta.events.register("before-call.s3.*", bound.start)
            client.meta.events.register_first("needs-retry.s3.*", bound.check)
            _clients[cache_key] = client
    return client


def _is_not_found(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(e, ClientError) and str(e.response.get("Error", {}).get("Code")) in (
        "404", "NoSuchKey", "NotFound")


def _s3_error(e: Exception, uri: str, action: str) -> StoreError:
    """Translate a boto error into a StoreError naming the URI (never the credentials)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        if _is_not_found(e):
            return StoreError(f"object not found: {uri}")
        if code == "NoSuchBucket":
            return StoreError(f"bucket not found for {uri}")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"access denied to {uri} ({code}); check the AWS_* credentials")
        return StoreError(f"cannot {action} {uri}: {code} {e.response.get('Error', {}).get('Message', '')}".rstrip())
    if isinstance(e, _DeadlineExceeded):
        return StoreError(f"cannot {action} {uri}: {e}")
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return StoreError(f"cannot {action} {uri}: no AWS credentials in the environment")
    return StoreError(f"cannot {action} {uri}: {type(e).__name__}: {e}")


def _boto_errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, Boto3Error, _DeadlineExceeded)


class S3Store(ObjectStore):
    """``s3://bucket/prefix`` on AWS S3 or any S3-compatible endpoint (MinIO, moto, Ceph)."""

    def __init__(self, bucket: str, prefix: str = ""):
        if not bucket or "/" in bucket:
            raise StoreError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = _check_key(prefix, what="S3 prefix") if prefix else ""
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StoreError(f"put_bytes({self.url(key)}) needs bytes, got {type(data).__name__}")
        try:
            _s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))
        except _boto_errors() as e:
            raise _s3_error(e, self.url(key), "write") from None
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            response = _s3_client().get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()
        except _boto_errors() as e:
            raise _s3_error(e, self.url(key), "read") from None

    def put_file(self, key: str, path: str | os.PathLike) -> str:
        src = _check_local_source(path)
        try:
            # upload_file switches to multipart above 8 MB; S3 publishes the object only at
            # CompleteMultipartUpload, so readers never see a partial upload.
            _s3_client().upload_file(str(src), self.bucket, self._key(key))
        except _boto_errors() as e:
            raise _s3_error(e, self.url(key), "write") from None
        return self.url(key)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        def download(tmp: str) -> None:
            try:
                _s3_client().download_file(self.bucket, self._key(key), tmp)
            except _boto_errors() as e:
                raise _s3_error(e, self.url(key), "read") from None

        _atomic_local_write(Path(path), download, str(path))

    def exists(self, key: str) -> bool:
        try:
            _s3_client().head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except _boto_errors() as e:
            if _is_not_found(e):
                return False
            raise _s3_error(e, self.url(key), "check") from None

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = _s3_client().get_paginator("list_objects_v2")
        keys = []
        try:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=root + prefix,
                                       PaginationConfig={"PageSize": _LIST_PAGE_SIZE})
            for page in pages:
                keys.extend(obj["Key"][len(root):] for obj in page.get("Contents", ())
                            if not obj["Key"].endswith(LEASE_SUFFIX))
        except _boto_errors() as e:
            raise _s3_error(e, self.uri + ("/" + prefix if prefix else ""), "list") from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            _s3_client().delete_object(Bucket=self.bucket, Key=self._key(key))
        except _boto_errors() as e:
            raise _s3_error(e, self.url(key), "delete") from None

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = _s3_client().get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]
        except _boto_errors() as e:
            if _is_not_found(e):
                return None
            raise _s3_error(e, self.url(key), "read") from None

    def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            response = _s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data), **condition)
        except _boto_errors() as e:
            # 412: the condition failed; 409: a concurrent conditional write won; 404: If-Match on
            # an object deleted meanwhile. All mean "someone else got there first".
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409") or _is_not_found(e):
                return None
            raise _s3_error(e, self.url(key), "write") from None
        return response["ETag"]


# --------------------------------------------------------------------------------------- entry


# Where a pipeline task mounts the persistent volume claim CLAIM (kfp-kubernetes `mount_pvc`):
# `pvc://CLAIM/some/dir` is the directory {PVC_MOUNT_ROOT}/CLAIM/some/dir of the task's filesystem.
PVC_MOUNT_ROOT = "/mnt/pvc"
_PVC_RE = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)(?P<path>/.*)?$")


def parse_pvc_uri(uri: str, field: str = "uri") -> tuple[str, str]:
    """(claim, path inside the volume) of ``pvc://CLAIM[/path]``; ConfigError naming ``field``."""
    m = _PVC_RE.match(uri)
    path = (m["path"] or "").strip("/") if m else ""
    if not m or any(seg in (".", "..") for seg in path.split("/")):
        raise ConfigError(f"field '{field}': {uri!r} is not pvc://CLAIM/path (CLAIM a Kubernetes "
                          "resource name: lower-case letters, digits, '-', '.'; no '..' in the path)")
    return m["claim"], path


def pvc_path(uri: str, field: str = "uri") -> str:
    """The mount path of ``pvc://CLAIM/path`` in a pipeline task: {PVC_MOUNT_ROOT}/CLAIM/path."""
    claim, path = parse_pvc_uri(uri, field)
    return "/".join(p for p in (PVC_MOUNT_ROOT, claim, path) if p)


def open_store(uri: str | os.PathLike) -> ObjectStore:
    """Open ``file:///abs/dir``, a plain path, ``s3://bucket/prefix`` or ``pvc://CLAIM/path`` (the
    claim's mount path, see ``pvc_path``)."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"invalid store URI {uri!r}: must be a non-empty string")
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        return S3Store(bucket, prefix.rstrip("/"))
    if uri.startswith("file://"):
        rest = uri[len("file://"):]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise StoreError(f"invalid file URI {uri!r}: expected file:///absolute/path")
        return FileStore(rest)
    if uri.startswith("pvc://"):
        return FileStore(pvc_path(uri))
    if _SCHEME_RE.match(uri):
        raise StoreError(f"unsupported store URI {uri!r}: use file://, s3:// or pvc://")
    return FileStore(uri)


def _split(uri: str) -> tuple[ObjectStore, str]:
    """Split a full object URI into (store of its parent, last key segment)."""
    store = open_store(uri)
    parent_uri, sep, name = store.uri.rstrip("/").rpartition("/")
    if not sep or not name or parent_uri in ("s3:/", "file:/") or (
        isinstance(store, S3Store) and not store.prefix
    ):
        raise StoreError(f"URI {uri!r} names no object")
    return open_store(parent_uri if parent_uri != "file://" else "file:///"), name


def read_bytes(uri: str) -> bytes:
    store, key = _split(uri)
    return store.get_bytes(key)


def write_bytes(uri: str, data: bytes) -> None:
    store, key = _split(uri)
    store.put_bytes(key, data)


def uri_exists(uri: str) -> bool:
    store, key = _split(uri)
    return store.exists(key)
