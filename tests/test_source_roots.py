"""Dataset roots on the cluster: `s3://bucket/prefix` (moto over HTTP) and `pvc://CLAIM/path`
discover and ingest the same layouts as a local directory, with errors naming the URI."""

from __future__ import annotations

import boto3
import pytest

import fixtures_datasets as F
from dakd_core import storage
from dakd_core.config import build_config
from dakd_core.data.formats import discover
from dakd_core.data.ingest import IngestConfig, run_ingest
from dakd_core.data.manifest import read_manifest
from dakd_core.data.source import StorePath, source_path
from dakd_core.errors import ConfigError, DataError
from dakd_core.storage import open_store

from test_ingest import WRITERS

# what must be identical between a local and an S3 ingest of the same tree
_SAME = ("sample_id", "condition", "height", "width", "sha256", "class_pixels", "image_object_sha256",
         "label_object_sha256")


def _upload(local_root, uri: str) -> None:
    store = open_store(uri)
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        store.put_file(path.relative_to(local_root).as_posix(), path)


def _ingest(fmt, root, split, store, **kw):
    return run_ingest(build_config(IngestConfig, format=fmt, root=str(root), split=split, domain="target",
                                   store=store, name="ds", **kw))


def _rows(result):
    return [{k: r[k] for k in _SAME} for r in read_manifest(result.manifest_uri)]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_s3_root_ingests_like_the_local_directory(tmp_path, s3_store, fmt):
    write, split = WRITERS[fmt]
    expected = write(tmp_path / "src")
    root = f"{s3_store}/raw/{fmt}"
    _upload(tmp_path / "src", root)
    local = _ingest(fmt, tmp_path / "src", split, (tmp_path / "a").as_uri())
    remote = _ingest(fmt, root, split, (tmp_path / "b").as_uri())
    assert [r["sample_id"] for r in _rows(remote)] == sorted(expected)
    assert _rows(remote) == _rows(local)
    # a second run reads every source object again (hashes) and skips them all
    again = _ingest(fmt, root, split, (tmp_path / "b").as_uri())
    assert (again.num_skipped, again.num_written) == (len(expected), 0)


def test_s3_root_process_pool_and_split_list_on_s3(tmp_path, s3_store):
    F.write_gta5(tmp_path / "g", n=4, split_lists={"val": [2, 4]})
    root = f"{s3_store}/raw/gta5"
    _upload(tmp_path / "g", root)
    # the split list found under the root, read through the store
    assert [s.sample_id for s in discover("gta5", root, "val")] == ["00002", "00004"]
    # an explicit split list given as an object URI; samples pickled into worker processes
    open_store(s3_store).put_bytes("lists/three.txt", b"00003.png\n")
    result = _ingest("gta5", root, "val", (tmp_path / "s").as_uri(), workers=2, pool="process",
                     split_list=f"{s3_store}/lists/three.txt")
    assert [r["sample_id"] for r in read_manifest(result.manifest_uri)] == ["00003"]
    with pytest.raises(DataError, match=f"split list {s3_store}/lists/none.txt does not exist"):
        discover("gta5", root, "val", split_list=f"{s3_store}/lists/none.txt")


def test_s3_root_errors_name_the_uri(tmp_path, s3_store):
    with pytest.raises(DataError, match=f"dataset root {s3_store}/empty does not exist"):
        discover("gta5", f"{s3_store}/empty", "all")
    F.write_gta5(tmp_path / "g", n=2)
    root = f"{s3_store}/g"
    _upload(tmp_path / "g", root)
    store = open_store(root)
    store.delete("labels/00002.png")
    with pytest.raises(DataError, match=f"label missing for 1 of 2 gta5 images: {root}/images/00002.png "
                                        f"\\(expected {root}/labels/00002.png\\)"):
        discover("gta5", root, "all", require_labels=True)
    store.put_bytes("labels/00002.png/x", b"")  # a prefix where the label object belongs
    with pytest.raises(DataError, match=f"label {root}/labels/00002.png is a prefix"):
        discover("gta5", root, "all")
    store.delete("labels/00002.png/x")
    store.put_bytes("images/cat.png", b"")
    with pytest.raises(DataError, match=f"under {root}/images do not follow the gta5 naming convention.*cat.png"):
        discover("gta5", root, "all")
    store.delete("images/cat.png")
    # a console "folder" marker (a key ending in "/") is not an image
    bucket, _, prefix = root[len("s3://"):].partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/images/", Body=b"")
    store.put_bytes("labels/00002.png", b"not a png")
    with pytest.raises(DataError, match=f"{root}/labels/00002.png"):
        _ingest("gta5", root, "all", (tmp_path / "s").as_uri())
    assert not (tmp_path / "s" / "datasets" / "ds" / "all" / "manifest.parquet").exists()


def test_pvc_root_is_the_claims_mount_path(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "PVC_MOUNT_ROOT", str(tmp_path / "mnt"))
    expected = F.write_gta5(tmp_path / "mnt" / "datasets-rwx" / "raw" / "gta5", n=2)
    assert source_path("pvc://datasets-rwx/raw/gta5") == tmp_path / "mnt" / "datasets-rwx" / "raw" / "gta5"
    result = _ingest("gta5", "pvc://datasets-rwx/raw/gta5", "all", "pvc://datasets-rwx/store")
    assert result.manifest_uri == f"file://{tmp_path}/mnt/datasets-rwx/store/datasets/ds/all/manifest.parquet"
    assert [r["sample_id"] for r in read_manifest(result.manifest_uri)] == sorted(expected)
    with pytest.raises(DataError, match=f"dataset root {tmp_path}/mnt/other/gta5 does not exist .*"
                                        f"pvc://other/gta5: is the claim mounted at {tmp_path}/mnt/other/gta5"):
        discover("gta5", "pvc://other/gta5", "all")
    assert storage.parse_pvc_uri("pvc://my.claim-1") == ("my.claim-1", "")
    for bad in ("pvc://", "pvc://Upper/x", "pvc://c/../etc", "pvc://c/a/./b", "pvc://-c/x"):
        with pytest.raises(ConfigError, match=f"field 'root': '{bad}' is not pvc://CLAIM/path"):
            source_path(bad)


def test_other_schemes_are_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="field 'root': gs://b/x is not a directory, file://, pvc://"):
        _ingest("gta5", "gs://b/x", "all", (tmp_path / "s").as_uri())
    assert isinstance(source_path("s3://b/x"), StorePath) and str(source_path("s3://b/x/")) == "s3://b/x"
