"""dakd_core.storage: the same behaviour on file:// and on s3:// (moto speaking real HTTP)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dakd_core import storage
from dakd_core.errors import ConfigError, StoreError
from dakd_core.storage import open_store, read_bytes, uri_exists, write_bytes


@pytest.fixture(params=["file", "s3"])
def store(request):
    return open_store(request.getfixturevalue(f"{request.param}_store"))


def test_round_trip_and_overwrite(store):
    url = store.put_bytes("a/b/c.bin", b"\x00\x01payload")
    assert url == f"{store.uri}/a/b/c.bin"
    assert store.get_bytes("a/b/c.bin") == b"\x00\x01payload"
    store.put_bytes("a/b/c.bin", b"second")
    assert store.get_bytes("a/b/c.bin") == b"second"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    # Full-URI helpers address the same objects.
    assert read_bytes(url) == b"second"
    write_bytes(store.url("x.txt"), b"via uri")
    assert store.get_bytes("x.txt") == b"via uri"
    assert uri_exists(store.url("x.txt")) and not uri_exists(store.url("nope.txt"))


def test_files_round_trip(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5000))
    assert store.put_file("files/src.bin", src) == store.url("files/src.bin")
    dest = tmp_path / "out" / "copy.bin"
    store.get_file("files/src.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]  # no temp files left
    with pytest.raises(StoreError, match="missing.bin"):
        store.put_file("k", tmp_path / "missing.bin")
    with pytest.raises(StoreError, match=store.url("files/none.bin")):
        store.get_file("files/none.bin", tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()


def test_exists_list_delete(store):
    for key in ["b/2", "a/1", "a/sub/3", "ab", "c"]:
        store.put_bytes(key, key.encode())
    assert store.list() == ["a/1", "a/sub/3", "ab", "b/2", "c"]
    assert store.list("a/") == ["a/1", "a/sub/3"]
    assert store.list("a") == ["a/1", "a/sub/3", "ab"]  # string prefix, as on S3
    assert store.list("zzz/") == []
    assert store.exists("a/1") and not store.exists("a")  # a prefix is not an object
    store.delete("a/1")
    assert not store.exists("a/1")
    store.delete("a/1")  # idempotent
    assert store.list() == ["a/sub/3", "ab", "b/2", "c"]


def test_child_store(store):
    child = store.child("runs/r1")
    assert child.uri == f"{store.uri}/runs/r1"
    child.put_bytes("stage/out.json", b"{}")
    assert store.get_bytes("runs/r1/stage/out.json") == b"{}"
    assert child.list() == ["stage/out.json"]
    assert open_store(child.uri) == child
    assert child.child("stage").get_bytes("out.json") == b"{}"


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/", "",
                                 "a\\b", "./a"])
def test_key_escape_rejected(store, key):
    with pytest.raises(StoreError, match="invalid"):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError, match="invalid"):
        store.get_bytes(key)
    with pytest.raises(StoreError, match="invalid"):
        store.child(key)


def test_missing_object_names_uri(store):
    with pytest.raises(StoreError) as err:
        store.get_bytes("no/such/key.bin")
    assert f"{store.uri}/no/such/key.bin" in str(err.value)
    with pytest.raises(StoreError, match="no/such"):
        read_bytes(store.url("no/such"))


def test_open_store_uris(tmp_path, monkeypatch):
    assert open_store(str(tmp_path)).uri == tmp_path.as_uri()
    assert open_store(tmp_path.as_uri() + "/").uri == tmp_path.as_uri()
    assert open_store(tmp_path).uri == tmp_path.as_uri()
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/dir").uri == (tmp_path / "rel" / "dir").as_uri()
    s3 = open_store("s3://bucket/a/b/")
    assert (s3.uri, s3.url("k")) == ("s3://bucket/a/b", "s3://bucket/a/b/k")
    assert open_store("s3://bucket").url("k") == "s3://bucket/k"
    for bad in ["gs://bucket/x", "file://host/x", "s3:///x", "s3://b/a//c", ""]:
        with pytest.raises(StoreError):
            open_store(bad)
    with pytest.raises(StoreError, match="names no object"):
        read_bytes("s3://bucket")


def test_file_put_is_atomic(file_store):
    """Concurrent readers see either the old or the new full content, never a prefix."""
    store = open_store(file_store)
    old, new = b"o" * 200_000, b"n" * 300_000
    store.put_bytes("obj", old)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(store.get_bytes("obj"))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(30):
        store.put_bytes("obj", new if i % 2 == 0 else old)
    stop.set()
    thread.join()
    assert seen <= {old, new} and old in seen
    root = Path(store.root)
    assert [p.name for p in root.iterdir()] == ["obj"]  # no temp files left behind


def test_failed_file_write_leaves_nothing(file_store, monkeypatch):
    """Disk full halfway through a write: the old object stays, no temp file is left."""
    store = open_store(file_store)
    store.put_bytes("obj", b"old")

    def half_then_enospc(data):
        def write(tmp):
            Path(tmp).write_bytes(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        return write

    monkeypatch.setattr(storage, "_write_bytes_fsync", half_then_enospc)
    with pytest.raises(StoreError, match=f"{store.uri}/obj.*No space left"):
        store.put_bytes("obj", b"new content")
    with pytest.raises(StoreError, match="No space left"):
        store.put_bytes("fresh/obj", b"new content")
    monkeypatch.undo()
    assert store.get_bytes("obj") == b"old"
    assert store.list() == ["obj"] and not store.exists("fresh/obj")
    assert sorted(p.name for p in Path(store.root).rglob("*") if p.is_file()) == ["obj"]


def test_s3_list_paginates(s3_store, monkeypatch):
    """list() follows continuation tokens: a page size of 10 forces 3 requests for 25 keys.

    (Real S3 caps pages at 1000 keys; the page size is lowered so the test stays fast.)
    """
    store = open_store(s3_store)
    keys = [f"many/{i:03d}" for i in range(25)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"."), keys))
    store.put_bytes("other", b".")
    monkeypatch.setattr(storage, "_LIST_PAGE_SIZE", 10)
    calls = []

    def count(**_):
        calls.append(1)

    client = storage._s3_client()
    client.meta.events.register("before-call.s3.ListObjectsV2", count)
    try:
        assert store.list("many/") == keys
    finally:
        client.meta.events.unregister("before-call.s3.ListObjectsV2", count)
    assert len(calls) == 3


def test_s3_client_is_configured_from_env(s3_store, s3_server, monkeypatch):
    client = storage._s3_client()
    # boto3 itself picked the endpoint from AWS_ENDPOINT_URL (no endpoint passed in code).
    assert client.meta.endpoint_url == s3_server
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}
    assert storage._s3_client() is client  # cached
    monkeypatch.setenv("DAKD_S3_MAX_ATTEMPTS", "3")
    assert storage._s3_client().meta.config.retries["total_max_attempts"] == 3
    monkeypatch.setenv("DAKD_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="DAKD_S3_MAX_ATTEMPTS"):
        storage._s3_client()


def test_s3_retries_are_counted(s3_store, s3_server, monkeypatch):
    """A 503 from the server is retried by botocore and shows up in retry_count()."""
    store = open_store(s3_store)
    store.put_bytes("k", b"v")
    failures = {"left": 1}

    def flaky(request, **_):
        from botocore.awsrequest import AWSResponse

        if failures["left"] > 0:
            failures["left"] -= 1
            return AWSResponse(request.url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>"))
        return None

    client = storage._s3_client()
    before = storage.retry_count()
    client.meta.events.register_first("before-send.s3.GetObject", flaky)
    try:
        assert store.get_bytes("k") == b"v"
    finally:
        client.meta.events.unregister("before-send.s3.GetObject", flaky)
    assert storage.retry_count() - before == 1


def test_s3_errors(s3_server, monkeypatch):
    with pytest.raises(StoreError, match="s3://no-such-bucket-dakd/k"):
        open_store("s3://no-such-bucket-dakd").get_bytes("k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("DAKD_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreError, match="s3://b/k") as err:
        open_store("s3://b").put_bytes("k", b"x")
    assert "super-secret-value" not in str(err.value)


class _Raw:
    """Minimal urllib3-like body for a fake botocore response."""

    def __init__(self, data: bytes):
        self._data = data

    def stream(self, *_args, **_kwargs):
        yield self._data


def test_s3_multipart_file_round_trip(s3_store, tmp_path):
    """Above boto3's 8 MB threshold put_file goes multipart; the object appears whole."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024))
    store = open_store(s3_store)
    store.put_file("big.bin", src)
    client = storage._s3_client()
    head = client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/big.bin")
    assert "-" in head["ETag"]  # multipart ETags end in -<parts>
    dest = tmp_path / "back.bin"
    store.get_file("big.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
