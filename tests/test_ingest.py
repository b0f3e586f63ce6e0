"""`dakd ingest` end to end: every format into file:// and s3:// stores, idempotent re-runs, and
every bad input failing with a message naming the file and no manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fixtures_datasets as F
from dakd_core.cli import main
from dakd_core.config import build_config
from dakd_core.data.imageio import decode_image, decode_label
from dakd_core.data.ingest import IngestConfig, _chunksize, run_ingest
from dakd_core.data.manifest import MANIFEST_SCHEMA, read_manifest
from dakd_core.errors import ConfigError, DataError
from dakd_core.labels import lut
from dakd_core.storage import open_store, read_bytes, uri_exists

# format -> (fixture writer, split to ingest)
WRITERS = {
    "cityscapes": (lambda r: F.write_cityscapes(r, split="val", cities=("frankfurt",)), "val"),
    "gta5": (lambda r: F.write_gta5(r, n=2), "all"),
    "synthia": (lambda r: F.write_synthia(r, n=2), "train"),
    "bdd100k": (lambda r: F.write_bdd100k(r, split="train", n=2, old_layout=True), "train"),
    "acdc": (lambda r: F.write_acdc(r, split="val", conditions=("night", "snow")), "val"),
    "mapillary": (lambda r: F.write_mapillary(r, folder="training", n=2), "train"),
}


def _cfg(fmt, root, split, store, **kw):
    return build_config(IngestConfig, format=fmt, root=str(root), split=split, domain="target",
                        store=store, name="ds", **kw)


def _manifest_uri(store, split):
    return f"{store}/datasets/ds/{split}/manifest.parquet"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_ingest_each_format_to_file_store(tmp_path, file_store, fmt):
    write, split = WRITERS[fmt]
    expected = write(tmp_path / "src")
    result = run_ingest(_cfg(fmt, tmp_path / "src", split, file_store, workers=2))
    assert result.manifest_uri == _manifest_uri(file_store, split)
    rows = read_manifest(result.manifest_uri)
    assert [r["sample_id"] for r in rows] == sorted(expected) and result.num_samples == len(rows)
    totals = np.zeros(19, np.int64)
    for row in rows:
        ids = expected[row["sample_id"]]
        ids, cond = ids if isinstance(ids, tuple) else (ids, None)
        train = lut(fmt)[ids]
        assert row["condition"] == cond and row["split"] == split and row["domain"] == "target"
        assert (row["height"], row["width"]) == (32, 64) and len(row["sha256"]) == 64
        assert row["image_uri"] == f"{file_store}/datasets/ds/{split}/images/{row['sample_id']}.png"
        assert row["label_uri"].endswith(f"/labels/{row['sample_id']}_labelTrainIds.png")
        assert np.array_equal(decode_label(read_bytes(row["label_uri"]), "l"), train)
        assert decode_image(read_bytes(row["image_uri"]), "i").shape == (32, 64, 3)
        counts = np.bincount(train.ravel(), minlength=256)[:19]
        assert row["class_pixels"] == counts.tolist()
        totals += counts
    summary = json.loads(read_bytes(result.summary_uri))
    assert [c["pixels"] for c in summary["classes"]] == totals.tolist()
    assert summary["classes"][0]["share"] == pytest.approx(totals[0] / totals.sum())
    assert summary["ignored_pixels"] == len(rows) * 64 * 32 - totals.sum()


def test_png_sources_are_stored_byte_for_byte(tmp_path, file_store):
    F.write_gta5(tmp_path, n=1)
    rows = read_manifest(run_ingest(_cfg("gta5", tmp_path, "all", file_store)).manifest_uri)
    stored = read_bytes(rows[0]["image_uri"])
    assert stored == (tmp_path / "images/00001.png").read_bytes()
    # one hash serves both: the source's and the stored object's (they are the same bytes)
    assert rows[0]["image_object_sha256"] == rows[0]["sha256"] == hashlib.sha256(stored).hexdigest()


@pytest.mark.parametrize(("items", "workers", "chunk"), [(6, 2, 1), (7, 1, 1), (100, 2, 12), (1000, 4, 16), (0, 3, 1)])
def test_process_pool_chunks_leave_every_worker_several_tasks(items, workers, chunk):
    """A fixed chunk of 4 split 6 samples 4/2 over 2 workers (at best 1.5x); chunks of
    items // (4 x workers), within 1..16, give each worker >= 4 tasks to balance on."""
    assert _chunksize(items, workers) == chunk


def test_s3_store_idempotent_reingest_and_change(tmp_path, s3_store):
    F.write_cityscapes(tmp_path, split="train", cities=("bonn",), per_city=3)
    cfg = _cfg("cityscapes", tmp_path, "train", s3_store, workers=2)
    first = run_ingest(cfg)
    assert first.manifest_uri.startswith("s3://") and first.num_written == 3
    manifest_bytes = read_bytes(first.manifest_uri)

    again = run_ingest(cfg)
    assert (again.num_written, again.num_skipped) == (0, 3)
    assert pq.read_table(pa.BufferReader(read_bytes(again.manifest_uri))).to_pylist() == \
        pq.read_table(pa.BufferReader(manifest_bytes)).to_pylist()

    # One changed image and one deleted object are redone; the rest is skipped.
    changed = tmp_path / "leftImg8bit/train/bonn/bonn_000001_000020_leftImg8bit.png"
    F.write_rgb(changed, F.random_rgb(np.random.default_rng(99)))
    open_store(s3_store).delete("datasets/ds/train/labels/bonn_000002_000021_labelTrainIds.png")
    third = run_ingest(cfg)
    assert (third.num_written, third.num_skipped) == (2, 1)
    row = {r["sample_id"]: r for r in read_manifest(third.manifest_uri)}["bonn_000001_000020"]
    assert decode_image(read_bytes(row["image_uri"]), "i").tolist() == \
        decode_image(changed.read_bytes(), "c").tolist()
    assert uri_exists(row["label_uri"].replace("000001_000020", "000002_000021"))


def test_no_labels_ingest(tmp_path, file_store):
    F.write_cityscapes(tmp_path, split="train", cities=("jena",), per_city=2)
    for p in (tmp_path / "gtFine").rglob("*labelIds.png"):
        p.unlink()
    result = run_ingest(_cfg("cityscapes", tmp_path, "train", file_store, labels=False))
    rows = read_manifest(result.manifest_uri)
    assert all(r["label_uri"] is None and r["class_pixels"] == [0] * 19 for r in rows)
    assert result.class_summary["labelled_samples"] == 0


def test_cli_prints_summary_and_manifest_uri(tmp_path, file_store, capsys):
    F.write_bdd100k(tmp_path, split="val", n=2)
    argv = ["ingest", "--format", "bdd100k", "--root", str(tmp_path), "--split", "val", "--domain",
            "source", "--store", file_store, "--name", "ds", "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == _manifest_uri(file_store, "val")
    assert any(line.split()[:2] == ["0", "road"] for line in out)
    assert any("2 samples (2 written, 0 unchanged)" in line for line in out)
    assert read_manifest(out[-1])[0]["domain"] == "source"


def test_process_pool_gives_the_same_manifest(tmp_path, file_store):
    F.write_synthia(tmp_path, n=3)
    threads = read_manifest(run_ingest(_cfg("synthia", tmp_path, "all", file_store, workers=2)).manifest_uri)
    store2 = file_store + "2"
    processes = read_manifest(run_ingest(_cfg("synthia", tmp_path, "all", store2, workers=2,
                                              pool="process")).manifest_uri)
    strip = [{k: v for k, v in r.items() if not k.endswith("_uri")} for r in threads]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_uri")} for r in processes]


# ------------------------------------------------------------------------------ bad inputs

def _break(tmp_path, case):
    """Write a 3-image Cityscapes tree and damage it; return (pattern of the message)."""
    F.write_cityscapes(tmp_path, split="train", cities=("ulm",), per_city=3)
    img = tmp_path / "leftImg8bit/train/ulm/ulm_000001_000020_leftImg8bit.png"
    lab = tmp_path / "gtFine/train/ulm/ulm_000001_000020_gtFine_labelIds.png"
    if case == "truncated":
        img.write_bytes(img.read_bytes()[:-100])
        return r"ulm_000001_000020_leftImg8bit\.png: truncated PNG"
    if case == "zero_byte":
        img.write_bytes(b"")
        return r"ulm_000001_000020_leftImg8bit\.png: empty file"
    if case == "unreadable":
        img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + b"IEND\xaeB`\x82")
        return r"ulm_000001_000020_leftImg8bit\.png: not a decodable image"
    if case == "label_missing":
        lab.unlink()
        return r"label missing for 1 of 3 .*ulm_000001_000020_leftImg8bit\.png .*gtFine_labelIds\.png"
    if case == "label_size":
        F.write_gray(lab, np.full((16, 64), 7, np.uint8))
        return r"label .*ulm_000001_000020_gtFine_labelIds\.png is 64x16 but its image .* is 64x32"
    if case == "label_16bit":
        F.write_gray(lab, np.full((32, 64), 7, np.uint16))
        return r"ulm_000001_000020_gtFine_labelIds\.png: uint16 label where 8-bit is expected"
    if case == "unknown_ids":
        ids = np.full((32, 64), 7, np.uint8)
        ids[0, :3] = [40, 41, 41]
        F.write_gray(lab, ids)
        other = tmp_path / "gtFine/train/ulm/ulm_000002_000021_gtFine_labelIds.png"
        ids[0, :3] = [250, 7, 7]
        F.write_gray(other, ids)
        return (r"label ids \[40, 41, 250\] are outside the 'cityscapes' table in 2 file\(s\): "
                r".*ulm_000001_000020_gtFine_labelIds\.png, .*ulm_000002_000021_gtFine_labelIds\.png")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated", "zero_byte", "unreadable", "label_missing", "label_size",
                                  "label_16bit", "unknown_ids"])
def test_bad_input_fails_without_manifest(tmp_path, file_store, case):
    pattern = _break(tmp_path / "src", case)
    with pytest.raises(DataError, match=pattern):
        run_ingest(_cfg("cityscapes", tmp_path / "src", "train", file_store, workers=2))
    assert not uri_exists(_manifest_uri(file_store, "train"))


def test_unknown_ids_ignore_maps_to_255_and_counts(tmp_path, file_store):
    _break(tmp_path / "src", "unknown_ids")
    result = run_ingest(_cfg("cityscapes", tmp_path / "src", "train", file_store, unknown_ids="ignore"))
    assert result.unknown_pixels == 3 + 1
    row = {r["sample_id"]: r for r in read_manifest(result.manifest_uri)}["ulm_000001_000020"]
    label = decode_label(read_bytes(row["label_uri"]), "l")
    assert label[0, :4].tolist() == [255, 255, 255, 0]
    assert row["class_pixels"][0] == 64 * 32 - 3


def test_cli_bad_inputs_exit_nonzero_without_manifest(tmp_path, file_store, capsys):
    base = ["ingest", "--root", str(tmp_path), "--split", "train", "--domain", "source",
            "--store", file_store, "--name", "ds"]
    assert main(base + ["--format", "kitti"]) == 2
    assert "field 'format'" in capsys.readouterr().err
    assert main(base + ["--format", "cityscapes"]) == 2  # empty root
    assert "leftImg8bit/train does not exist" in capsys.readouterr().err
    F.write_gta5(tmp_path, n=1)  # a GTA5 tree is no Cityscapes tree
    assert main(base + ["--format", "cityscapes"]) == 2
    assert "is not a cityscapes root" in capsys.readouterr().err
    assert main(base + ["--format", "gta5", "--unknown-ids", "drop"]) == 2
    assert "field 'unknown_ids'" in capsys.readouterr().err
    assert not uri_exists(_manifest_uri(file_store, "train"))


def test_failed_reingest_of_changed_data_removes_the_stale_manifest(tmp_path, file_store):
    F.write_gta5(tmp_path, n=2)
    cfg = _cfg("gta5", tmp_path, "all", file_store)
    run_ingest(cfg)
    F.write_rgb(tmp_path / "images/00001.png", F.random_rgb(np.random.default_rng(5)))  # changed
    (tmp_path / "images/00002.png").write_bytes(b"")  # and broken
    with pytest.raises(DataError, match=r"00002\.png: empty file"):
        run_ingest(cfg)
    assert not uri_exists(_manifest_uri(file_store, "all"))


def test_config_is_strict():
    with pytest.raises(ConfigError, match="field 'name'"):
        build_config(IngestConfig, format="gta5", root="/x", split="all", domain="source", store="/s", name="../up")
    with pytest.raises(ConfigError, match="field 'workers'"):
        build_config(IngestConfig, format="gta5", root="/x", split="all", domain="source", store="/s",
                      name="n", workers=0)
    with pytest.raises(ConfigError, match="field 'domain'"):
        build_config(IngestConfig, format="gta5", root="/x", split="all", domain="both", store="/s", name="n")


# --------------------------------------------------------------------------- read_manifest

def test_read_manifest_errors_name_the_uri(file_store):
    store = open_store(file_store)
    missing = f"{file_store}/datasets/none/train/manifest.parquet"
    with pytest.raises(DataError, match=f"manifest {missing} cannot be read"):
        read_manifest(missing)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([], schema=MANIFEST_SCHEMA), sink)
    empty = store.put_bytes("empty.parquet", sink.getvalue().to_pybytes())
    with pytest.raises(DataError, match=f"manifest {empty} is empty"):
        read_manifest(empty)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"sample_id": ["a"]}), sink)
    wrong = store.put_bytes("wrong.parquet", sink.getvalue().to_pybytes())
    with pytest.raises(DataError, match=f"manifest {wrong} has the wrong schema"):
        read_manifest(wrong)
    junk = store.put_bytes("junk.parquet", b"not parquet")
    with pytest.raises(DataError, match=f"manifest {junk} is not a readable Parquet file"):
        read_manifest(junk)
