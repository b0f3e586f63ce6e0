"""Reliability, second round (issue 16): the checks behind the bad-input corpus that are not one
CLI call each - every float field of every config, checkpoint finiteness, re-ingest against the
stored objects, manifest and cache integrity, unprivileged processes (unreadable directories, a
read-only tracking database) and all-void label splits.

The CLI cases themselves live in tests/test_reliability_bad_inputs.py (and docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import fixtures_datasets as F
from _distill_data import H, W, make_checkpoint, make_split
from dakd_core.cli import main
from dakd_core.config import StrictConfig, build_config, load_yaml
from dakd_core.data.imageio import MAX_PIXELS, decode_image, decode_label, encode_png, jpeg_size
from dakd_core.data.ingest import IngestConfig, image_key, label_key, run_ingest
from dakd_core.data.manifest import (MANIFEST_SCHEMA, OBJECT_HASH_COLUMNS, read_manifest, read_row_image,
                                     read_row_label, to_table)
from dakd_core.errors import ConfigError, DataError, TrainingError
from dakd_core.storage import open_store, read_bytes

ROOT = Path(__file__).resolve().parents[1]
CONFIG_MODULES = ("dakd_core.train.configs", "dakd_core.train.distill_config", "dakd_core.cache",
                  "dakd_core.data.ingest", "dakd_core.data.synth", "dakd_core.evaluation.evaluate",
                  "dakd_core.evaluation.score", "dakd_core.export", "dakd_core.registry",
                  "dakd_core.orchestration.params")


# ----------------------------------------------------------------------------- 1. configs


def _all_configs() -> list[type[StrictConfig]]:
    import importlib

    for name in CONFIG_MODULES:
        importlib.import_module(name)
    found, todo = [], [StrictConfig]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def _float_slots(annotation) -> list[tuple[object, str]]:
    """(tuple index or None, error loc suffix) for each float inside a field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is float:
        return [(None, "")]
    if origin in (typing.Union, types.UnionType):
        return [slot for a in args if a is not type(None) for slot in _float_slots(a)]
    if origin is typing.Annotated and args[0] is float:  # a bounded float arm of a union (a number or a word)
        return [(None, ".constrained-float")]
    if origin is tuple and float in args:
        return [(i, f".{i}") for i, a in enumerate(args) if a is float]
    return []


def _float_fields():
    for cls in _all_configs():
        for name, info in cls.model_fields.items():
            for index, suffix in _float_slots(info.annotation):
                yield cls, name, index, suffix


FLOAT_FIELDS = list(_float_fields())


def test_the_float_field_list_covers_the_training_and_pipeline_configs():
    names = {(cls.__name__, name) for cls, name, _, _ in FLOAT_FIELDS}
    assert {("PretrainConfig", "lr"), ("AdaptConfig", "d_betas"), ("DistillConfig", "temperature"),
            ("PipelineParams", "train_lr"), ("ExportConfig", "max_miou_delta"), ("AdaptConfig", "sfda_tau")} <= names
    assert len(FLOAT_FIELDS) >= 90  # 93 slots today; guards the introspection against finding nothing


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_float_field_of_every_config_refuses_non_finite_values(bad):
    accepted = []
    for cls, name, index, suffix in FLOAT_FIELDS:
        default = cls.model_fields[name].default
        if index is None:
            value = bad
        else:  # the default tuple with one element replaced
            value = list(default) if isinstance(default, tuple) else [0.5] * (index + 1)
            value[index] = bad
        try:
            build_config(cls, **{name: value})
        except ConfigError as e:
            # Other required fields are missing too: the message must still name this one.
            if f"field '{name}{suffix}': Input should be a finite number" not in str(e):
                accepted.append(f"{cls.__name__}.{name}{suffix}: {str(e)[:300]}")
        else:
            accepted.append(f"{cls.__name__}.{name}{suffix} accepted {bad}")
    assert not accepted, "\n".join(accepted)


@pytest.mark.parametrize("text,field", [
    ("params:\n  adapt_lambda_adv_main: .inf\n", "params.adapt_lambda_adv_main"),
    ("params:\n  distill_temperature: .nan\n", "params.distill_temperature"),
    ("params:\n  distill_lambda_kl: -.inf\n", "params.distill_lambda_kl"),
])
def test_pipeline_run_config_refuses_non_finite_params(tmp_path, text, field):
    from dakd_core.orchestration.params import load_params, load_run_config

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"field '{field}': Input should be a finite number"):
        load_run_config(str(path))
    inner = tmp_path / "params.yaml"
    inner.write_text(text.replace("params:\n  ", ""))
    with pytest.raises(ConfigError, match=rf"field '{field.split('.')[1]}': Input should be a finite number"):
        load_params(str(inner))


def test_assignment_is_checked_too():
    from pydantic import ValidationError

    from dakd_core.train.configs import PretrainConfig

    cfg = build_config(PretrainConfig, source_manifest="file:///m", out="file:///o")
    with pytest.raises(ValidationError, match="finite number"):
        cfg.lr = float("inf")
    assert cfg.lr == 2.5e-4


@pytest.mark.parametrize("text,message", [
    ("lr: 0.1\nlr: 0.2\n", r"duplicate key 'lr' \(lines 1 and 2\)"),
    ("{lr: 0.1, lr: 0.2}\n", r"duplicate key 'lr' \(lines 1 and 1\)"),
    ("params:\n  lr: 0.1\n  seed: 1\n  lr: 0.3\nlocal: {}\n", r"duplicate key 'lr' \(lines 2 and 4\)"),
    ("params: {}\nlocal: {}\nparams: {}\n", r"duplicate key 'params' \(lines 1 and 3\)"),
])
def test_duplicate_yaml_keys_name_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config file {path}: {message}"):
        load_yaml(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 0.1, seed: 1}\nrun:\n  <<: *b\n  lr: 0.5\n")
    assert load_yaml(path)["run"] == {"lr": 0.5, "seed": 1}


def test_config_file_that_is_binary_a_directory_or_missing(tmp_path):
    from dakd_core.train.configs import PretrainConfig

    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00\x01" * 8)
    with pytest.raises(ConfigError, match=rf"config file {binary} is not a YAML text file: byte 4 \(0xff\)"):
        build_config(PretrainConfig, binary)
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a directory"):
        build_config(PretrainConfig, tmp_path)
    with pytest.raises(ConfigError, match=rf"config file not found: {tmp_path / 'nope.yaml'}"):
        build_config(PretrainConfig, tmp_path / "nope.yaml")


def test_generated_flags_parse_constrained_size_tuples():
    import argparse

    from dakd_core.cli._config_args import add_config_arguments, config_from_args
    from dakd_core.config import HW

    class Sized(StrictConfig):
        size: HW = (4, 8)

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Sized)
    assert config_from_args(Sized, parser.parse_args(["--size", "3", "5"])).size == (3, 5)
    with pytest.raises(ConfigError, match=r"field 'size\.1': Input should be greater than 0"):
        config_from_args(Sized, parser.parse_args(["--size", "3", "0"]))


# ----------------------------------------------------------------------------- 2. checkpoints


def _tiny_payload(step=3):
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload

    torch.manual_seed(0)
    return make_payload(create_model("deeplabv2_tiny", num_classes=19), step=step)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_last_good_one(tmp_path, bad):
    from dakd_core.models.checkpoint import load_checkpoint, save_checkpoint

    store = open_store(tmp_path.as_uri())
    good = save_checkpoint(store, _tiny_payload(step=1), "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    payload = _tiny_payload(step=2)
    name = [k for k, v in payload["model"].items() if v.is_floating_point()][-1]
    payload["model"][name].view(-1)[:2] = bad
    with pytest.raises(TrainingError, match=rf"refusing to save checkpoint {good} \(step 2\), nothing written: "
                                            rf"checkpoint entry payload\.model\.{name} holds 2 non-finite"):
        save_checkpoint(store, payload, "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before  # the last good checkpoint is kept
    with pytest.raises(TrainingError, match=r"step_2\.pt \(step 2\)"):
        save_checkpoint((tmp_path / "step_2.pt").as_uri(), payload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left either
    assert load_checkpoint(good)["step"] == 1


def test_save_checkpoint_checks_every_tensor_entry_but_not_integer_ones(tmp_path):
    from dakd_core.models.checkpoint import save_checkpoint

    payload = _tiny_payload()
    payload["discriminator"] = {"w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(TrainingError, match=r"payload\.discriminator\.w holds 1 non-finite"):
        save_checkpoint((tmp_path / "d.pt").as_uri(), payload)
    payload["discriminator"] = {"w": torch.ones(2)}
    payload["rng"] = torch.randint(0, 255, (8,), dtype=torch.uint8)
    payload["best_metric"] = float("nan")  # a plain float (no selection yet) is not a weight
    save_checkpoint((tmp_path / "d.pt").as_uri(), payload)
    assert (tmp_path / "d.pt").stat().st_size > 0


# ----------------------------------------------------------------------------- 4. images and labels


def _png_header(width, height, colour_type=2) -> bytes:
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def _jpeg_declaring(width, height) -> bytes:
    """A real JPEG whose SOF0 size fields are rewritten."""
    import cv2

    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_signature_must_match_the_name():
    import cv2

    rgb = F.random_rgb(np.random.default_rng(3))
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    png = encode_png(rgb)
    assert decode_image(jpeg, "a.jpg").shape == decode_image(png, "a.png").shape == (32, 64, 3)
    assert decode_image(jpeg, "shard.bin#x/image").shape == (32, 64, 3)  # no extension: no name check
    with pytest.raises(DataError, match=r"a\.png: JPEG bytes under a \.png name"):
        decode_image(jpeg, "a.png")
    with pytest.raises(DataError, match=r"s3://b/a\.JPEG: PNG bytes under a \.JPEG name"):
        decode_image(png, "s3://b/a.JPEG")
    with pytest.raises(DataError, match=r"x\.png: not a decodable image \(neither a PNG nor a JPEG"):
        decode_image(cv2.imencode(".bmp", rgb)[1].tobytes(), "x.png")
    ids = np.zeros((32, 64), np.uint8)
    with pytest.raises(DataError, match=r"l\.jpg: JPEG label; labels must be lossless PNG"):
        decode_label(cv2.imencode(".jpg", ids)[1].tobytes(), "l.jpg")
    with pytest.raises(DataError, match=r"l\.png: JPEG bytes under a \.png name"):
        decode_label(cv2.imencode(".jpg", ids)[1].tobytes(), "l.png")


@pytest.mark.parametrize("data,pattern", [
    (_png_header(100000, 100000), r"header declares 100000x100000 pixels \(10000 Mpx\)"),
    (_png_header(100000, 100000, colour_type=3), r"header declares 100000x100000 pixels"),  # palette: Pillow
    (_png_header(0, 5), r"header declares an empty 0x5 image"),
    (_jpeg_declaring(65535, 65535), r"header declares 65535x65535 pixels"),
])
def test_oversized_or_empty_headers_are_refused_before_decoding(data, pattern):
    for decode in (decode_image, decode_label):
        if decode is decode_label and data[:2] == b"\xff\xd8":
            continue  # a JPEG label is refused for being JPEG
        with pytest.raises(DataError, match=pattern):
            decode(data, "big" if data[:2] == b"\xff\xd8" else "big.png")


def test_jpeg_size_reads_the_frame_header():
    assert jpeg_size(_jpeg_declaring(640, 480)) == (640, 480)
    assert jpeg_size(b"\xff\xd8\xff\xd9") is None
    assert MAX_PIXELS >= 8192 * 8192  # large real photos (Mapillary ~ 5000x4000) stay accepted


def test_a_directory_named_like_an_image_is_an_error_not_skipped(tmp_path):
    from dakd_core.data.formats import discover

    F.write_gta5(tmp_path, n=2)
    (tmp_path / "images" / "00003.png").mkdir()
    with pytest.raises(DataError, match=r"1 image path\(s\) under \S+images are directories, not files: \S+00003\.png"):
        discover("gta5", tmp_path, "all")


# ----------------------------------------------------------------------------- 5. re-ingest


def _ingest_cfg(root, store, **kw):
    return build_config(IngestConfig, format="cityscapes", root=str(root), split="train", domain="source",
                        store=store, name="ds", **kw)


@pytest.mark.parametrize("which", ["image", "label"])
def test_reingest_rewrites_a_stored_object_that_no_longer_matches_the_manifest(tmp_path, file_store, which):
    F.write_cityscapes(tmp_path / "src", split="train", cities=("ulm",), per_city=3)
    cfg = _ingest_cfg(tmp_path / "src", file_store, workers=2)
    first = run_ingest(cfg)
    rows = {r["sample_id"]: r for r in read_manifest(first.manifest_uri)}
    sid = "ulm_000001_000020"
    dataset = open_store(file_store).child("datasets/ds/train")
    key = image_key(sid) if which == "image" else label_key(sid)
    original = dataset.get_bytes(key)
    assert hashlib.sha256(original).hexdigest() == rows[sid][f"{which}_object_sha256"]

    again = run_ingest(cfg)  # nothing changed: every sample skipped, objects verified
    assert (again.num_written, again.num_skipped, again.num_repaired) == (0, 3, 0)

    # Another valid PNG of the same size replaces the stored object: the source did not change,
    # so only the object check can notice it.
    replacement = np.full((32, 64, 3) if which == "image" else (32, 64), 3, np.uint8)
    dataset.put_bytes(key, encode_png(replacement))
    with pytest.raises(DataError, match=rf"{which} \S+{key} has sha256 \w+, but manifest \S+ recorded"):
        (read_row_image if which == "image" else read_row_label)(rows[sid], first.manifest_uri)
    third = run_ingest(cfg)
    assert (third.num_written, third.num_skipped, third.num_repaired) == (1, 2, 1)
    assert dataset.get_bytes(key) == original
    assert read_manifest(third.manifest_uri) == list(rows.values())


def test_manifest_without_object_hashes_is_read_and_redone_on_reingest(tmp_path, file_store):
    F.write_cityscapes(tmp_path / "src", split="train", cities=("ulm",), per_city=2)
    cfg = _ingest_cfg(tmp_path / "src", file_store)
    uri = run_ingest(cfg).manifest_uri
    rows = read_manifest(uri)
    v1 = to_table(rows).drop_columns(list(OBJECT_HASH_COLUMNS))  # as written before object hashes
    sink = io.BytesIO()
    pq.write_table(v1, sink)
    open_store(file_store).put_bytes("datasets/ds/train/manifest.parquet", sink.getvalue())
    old = read_manifest(uri)
    assert all(r["image_object_sha256"] is None and r["label_object_sha256"] is None for r in old)
    assert read_row_image(old[0], uri).shape == (32, 64, 3)  # no hash recorded: nothing to compare
    again = run_ingest(cfg)
    assert (again.num_written, again.num_skipped, again.num_repaired) == (2, 0, 0)
    assert read_manifest(uri) == rows
    assert pq.read_table(io.BytesIO(read_bytes(uri))).schema.equals(MANIFEST_SCHEMA, check_metadata=False)


# ----------------------------------------------------------------------------- 6. manifests


def _write_raw_manifest(store, rows) -> str:
    sink = io.BytesIO()
    pq.write_table(to_table(rows), sink)
    return store.put_bytes("datasets/x/train/manifest.parquet", sink.getvalue())


@pytest.mark.parametrize("uri,why", [
    ("{root}/datasets/x/images/../../../../etc/passwd", "does not resolve inside"),
    ("{root}/datasets/x/images//a.png", "does not resolve inside"),
    ("{root}/./a.png", "does not resolve inside"),
    ("/etc/passwd", "is outside the manifest's store"),
    ("file:///etc/passwd", "is outside the manifest's store"),
    ("s3://bucket/datasets/x/images/a.png", "is outside the manifest's store"),
    ("{root}-sibling/a.png", "is outside the manifest's store"),
])
def test_manifest_uris_must_resolve_inside_the_manifest_store(file_store, uri, why):
    store = open_store(file_store)
    ok = make_split(file_store, "x", "source", 1, seed=0)
    row = {**read_manifest(ok)[0], "image_uri": uri.format(root=file_store)}
    bad = _write_raw_manifest(store, [row])
    with pytest.raises(DataError, match=rf"manifest {bad}: row 0 \('x_000'\) image_uri .* {why}"):
        read_manifest(bad)
    from dakd_core.data.manifest import write_manifest

    with pytest.raises(DataError, match=why):
        write_manifest(store, "datasets/y/train/manifest.parquet", [row])


def test_manifest_outside_the_standard_layout_may_only_name_objects_beside_it(file_store):
    store = open_store(file_store)
    row = read_manifest(make_split(file_store, "x", "source", 1, seed=0))[0]
    sink = io.BytesIO()
    pq.write_table(to_table([row]), sink)
    loose = store.put_bytes("loose/manifest.parquet", sink.getvalue())  # objects are in datasets/x/...
    with pytest.raises(DataError, match=rf"is outside the manifest's store {file_store}/loose"):
        read_manifest(loose)


def test_row_size_is_checked_against_the_decoded_pixels(file_store):
    uri = make_split(file_store, "x", "source", 1, seed=0)
    row = read_manifest(uri)[0]
    assert read_row_image(row, uri).shape == (H, W, 3) and read_row_label(row, uri).shape == (H, W)
    with pytest.raises(DataError, match=rf"image \S+x_000\.png is {W}x{H} but manifest {uri} records {W + 1}x{H}"):
        read_row_image({**row, "width": W + 1}, uri)
    with pytest.raises(DataError, match=rf"label \S+x_000\.png is {W}x{H} but image \S+ is {W}x{H - 1}"):
        read_row_label({**row, "height": H - 1}, uri)


# ----------------------------------------------------------------------------- 7. cache checksums


@pytest.fixture(scope="module")
def cache_world(tmp_path_factory):
    from dakd_core.cache import CacheConfig, run_cache

    store = tmp_path_factory.mktemp("cachestore").as_uri()
    src = make_split(store, "src", "source", 3, seed=1)
    teacher = make_checkpoint(f"{store}/teacher.pt", seed=0)
    index = run_cache(CacheConfig(teacher=teacher, manifests=[src], store=store, name="c", size=(H, W),
                                  shard_size=2, device="cpu")).index_uri
    return {"store": store, "index": index}


def test_index_rows_carry_the_sha256_of_their_shard(cache_world):
    rows = pq.read_table(io.BytesIO(read_bytes(cache_world["index"]))).to_pylist()
    root = cache_world["index"].rsplit("/", 1)[0]
    assert sorted({r["shard_key"] for r in rows}) == ["shards/shard_00000.bin", "shards/shard_00001.bin"]
    for r in rows:
        assert r["shard_sha256"] == hashlib.sha256(read_bytes(f"{root}/{r['shard_key']}")).hexdigest()


def _cache_copy(cache_world, tmp_path, edit_rows=None, edit_store=None) -> str:
    source = open_store(cache_world["index"].rsplit("/", 1)[0])
    copy = open_store(tmp_path.as_uri())
    for key in source.list():
        copy.put_bytes(key, source.get_bytes(key))
    if edit_store:
        edit_store(copy)
    table = pq.read_table(io.BytesIO(copy.get_bytes("index.parquet")))
    if edit_rows:
        table = edit_rows(table)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return copy.put_bytes("index.parquet", sink.getvalue())


def test_a_flipped_bit_in_a_shard_is_a_data_error_naming_it(cache_world, tmp_path):
    from dakd_core.cache import TeacherCache

    def flip(store):
        data = bytearray(store.get_bytes("shards/shard_00001.bin"))
        data[7] ^= 1
        store.put_bytes("shards/shard_00001.bin", bytes(data))

    cache = TeacherCache(_cache_copy(cache_world, tmp_path, edit_store=flip))
    assert cache.get("src_000")["main"].shape[0] == 19  # shard 0 is intact and still served
    with pytest.raises(DataError, match=rf"teacher cache shard {tmp_path.as_uri()}/shards/shard_00001\.bin is "
                                        r"corrupt: sha256 \w+, but index \S+ recorded \w+"):
        cache.get("src_002")


def test_cache_index_shard_keys_and_checksums_are_validated(cache_world, tmp_path):
    from dakd_core.cache import TeacherCache

    def column(name, values):
        return lambda t: t.set_column(t.schema.get_field_index(name), name, pa.array(values(t), pa.string()))

    outside = column("shard_key", lambda t: ["s3://other/shard.bin"] + t.column("shard_key").to_pylist()[1:])
    with pytest.raises(DataError, match=r"sample 'src_000' has shard_key 's3://other/shard\.bin' outside"):
        TeacherCache(_cache_copy(cache_world, tmp_path / "a", edit_rows=outside))
    split = column("shard_sha256", lambda t: ["0" * 64] + t.column("shard_sha256").to_pylist()[1:])
    with pytest.raises(DataError, match=r"shard 'shards/shard_00000\.bin' has no single sha256"):
        TeacherCache(_cache_copy(cache_world, tmp_path / "b", edit_rows=split))
    old = _cache_copy(cache_world, tmp_path / "c", edit_rows=lambda t: t.drop_columns(["shard_sha256"]))
    with pytest.raises(DataError, match=r"lacks columns \['shard_sha256'\] \(not a dakd-teacher-cache/3 cache"):
        TeacherCache(old)


# ----------------------------------------------------------------------------- 8. unprivileged


def _unprivileged(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`dakd argv` in a process that file permissions apply to: as root, without the capabilities
    that bypass them (CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH), else as the current user."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions would not apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAKD_NO_PROGRESS": "1", **env}
    return subprocess.run([*prefix, sys.executable, "-m", "dakd_core", *argv], env=env, capture_output=True,
                          text=True, timeout=1800)  # minutes only on a starved machine; seconds usually


@pytest.mark.parametrize("folder,message", [
    ("gtFine/train/ulm", "cannot read label {path}/ulm_000000_000019_gtFine_labelIds.png: Permission denied"),
    # Path.rglob skipped such a folder silently: half a split would have been ingested.
    ("leftImg8bit/train/ulm", "cannot read directory {path}: Permission denied"),
], ids=["label-directory", "image-directory"])
def test_unreadable_dataset_directory_is_a_named_error_exit_2(tmp_path, file_store, folder, message):
    F.write_cityscapes(tmp_path / "cs", split="train", cities=("bonn", "ulm"), per_city=1)
    path = tmp_path / "cs" / folder
    path.chmod(0)
    try:
        result = _unprivileged(["ingest", "--format", "cityscapes", "--root", str(tmp_path / "cs"), "--split",
                                "train", "--domain", "source", "--store", file_store, "--name", "ds"], {})
    finally:
        path.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "dakd ingest: error: " + message.format(path=path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store" / "datasets").exists()


def _one_step_pretrain(src: str, out: Path) -> list[str]:
    return ["pretrain", "--model", "deeplabv2_tiny", "--source-manifest", src, "--out", out.as_uri(), "--crop",
            str(H), str(W), "--source-resize", str(H), str(W), "--batch-size", "2", "--num-workers", "0",
            "--iterations", "1", "--device", "cpu"]


def test_read_only_tracking_database_file_is_a_named_error_exit_2(tmp_path, mlflow_uri):
    store = tmp_path.as_uri()
    src = make_split(store, "src", "source", 2, seed=1)
    db = Path(mlflow_uri[len("sqlite:///"):])
    db.chmod(0o444)
    out = tmp_path / "run"
    argv = _one_step_pretrain(src, out)
    try:
        result = _unprivileged(argv, {"MLFLOW_TRACKING_URI": mlflow_uri})
    finally:
        db.chmod(0o644)
    assert result.returncode == 2, result.stderr[-3000:]
    # (named by dakd_core.tracking.check_writable before the stage trains)
    assert f"dakd pretrain: error: MLflow tracking database {db} cannot be written (Permission denied)" in result.stderr
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("case", ["database-directory", "artifact-directory", "file-store-directory"])
def test_unwritable_mlflow_directory_is_a_named_error_exit_2(tmp_path, case, _mlflow_template_db):
    """A read-only directory where MLflow must write: named before the stage trains, not after it
    (artifact directory: a PermissionError traceback at the end) or minutes later (sqlite: MLflow
    retries opening the database, then raises)."""
    store = tmp_path.as_uri()
    src = make_split(store, "src", "source", 2, seed=1)
    locked = tmp_path / "locked"
    locked.mkdir()
    env, expected = {
        "database-directory": ({"MLFLOW_TRACKING_URI": f"sqlite:///{locked}/new.db"},
                               f"directory of the MLflow tracking database {locked} cannot be written "
                               "(Permission denied): fix its permissions, point MLFLOW_TRACKING_URI"),
        "artifact-directory": ({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/ok.db",
                                "DAKD_MLFLOW_ARTIFACT_ROOT": (locked / "artifacts").as_uri()},
                               f"MLflow artifact directory {locked}/artifacts cannot be written (Permission denied): "
                               "fix its permissions, point DAKD_MLFLOW_ARTIFACT_ROOT"),
        "file-store-directory": ({"MLFLOW_TRACKING_URI": locked.as_uri()},
                                 f"MLflow tracking directory {locked} cannot be written (Permission denied)"),
    }[case]
    shutil.copyfile(_mlflow_template_db, tmp_path / "ok.db")
    (tmp_path / "ok.db").chmod(0o666)
    locked.chmod(0o555)
    out = tmp_path / "run"
    argv = _one_step_pretrain(src, out)
    try:
        result = _unprivileged(argv, env)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"dakd pretrain: error: {expected}" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "will be retried" not in result.stderr
    assert not (out / "result.json").exists() and not (out / "last.pt").exists()


# ----------------------------------------------------------------------------- 9. all-void labels


def _void_manifest(file_store) -> str:
    """A labelled manifest whose every label pixel is 255 (as an older ingest could write)."""
    uri = make_split(file_store, "void", "target", 2, seed=3)
    store = open_store(file_store)
    for row in read_manifest(uri):
        store.put_bytes(row["label_uri"][len(file_store) + 1:], encode_png(np.full((H, W), 255, np.uint8)))
    return uri


def test_evaluate_on_all_void_labels_reports_undefined_metrics_without_crashing(tmp_path, file_store, capsys,
                                                                                mlflow_uri):
    manifest = _void_manifest(file_store)
    model = make_checkpoint((tmp_path / "m.pt").as_uri(), seed=0)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", f"student={model}", "--manifest", manifest, "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "student: mIoU -  pixel acc -  (no labelled pixel in the manifest: metrics undefined)" in printed
    metrics = json.loads((out / "metrics.json").read_text())["models"]["student"]
    assert metrics["labelled_pixels"] == 0 and metrics["miou"] is None and metrics["ece"] is None
    assert metrics["reliability"]["count"] == [0] * 15
    assert (out / "plots" / "reliability.png").stat().st_size > 0
    assert "| student | - |" in (out / "report.md").read_text()


def test_score_on_all_void_ground_truth_prints_undefined_metrics(tmp_path, capsys):
    gt = tmp_path / "gt"
    ids = F.write_cityscapes(gt, split="val", cities=("ulm",), per_city=1)
    for sid in ids:
        F.write_gray(gt / f"gtFine/val/ulm/{sid}_gtFine_labelIds.png", np.zeros((32, 64), np.uint8))  # unlabeled
        F.write_gray(tmp_path / "pred" / f"{sid}.png", np.zeros((32, 64), np.uint8))
    assert main(["score", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--gt-format", "cityscapes",
                 "--out", str(tmp_path / "out")]) == 0
    assert "mIoU -  pixel acc -  (1 images)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["miou"] is None


def test_ingest_refuses_an_all_void_split_but_not_a_partly_void_one(tmp_path, file_store):
    F.write_cityscapes(tmp_path / "cs", split="train", cities=("ulm",), per_city=2)
    labels = sorted((tmp_path / "cs/gtFine/train/ulm").glob("*_labelIds.png"))
    F.write_gray(labels[0], np.zeros((32, 64), np.uint8))  # one all-void image is fine
    assert run_ingest(_ingest_cfg(tmp_path / "cs", file_store)).num_samples == 2
    F.write_gray(labels[1], np.full((32, 64), 50, np.uint8))  # unknown ids, mapped to 255 by 'ignore'
    with pytest.raises(DataError, match=r"every label pixel .* is void \(255\) in all 2 labels, no manifest "
                                        r"written: .*field 'unknown_ids' \(ignore maps unknown ids to 255\)"):
        run_ingest(_ingest_cfg(tmp_path / "cs", file_store + "2", unknown_ids="ignore"))
    assert not open_store(file_store + "2").exists("datasets/ds/train/manifest.parquet")
