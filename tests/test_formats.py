"""Layout discovery and label reading on fixture trees in each dataset's naming convention, and
the image codec's checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import fixtures_datasets as F
from dakd_core.data import formats
from dakd_core.data.imageio import decode_image, decode_label, encode_png, is_png_rgb8
from dakd_core.errors import ConfigError, DataError
from dakd_core.labels import lut


def _check_labels(fmt, samples, expected):
    assert [s.sample_id for s in samples] == sorted(expected)
    for s in samples:
        ids = expected[s.sample_id]
        ids = ids[0] if isinstance(ids, tuple) else ids
        got = formats.read_label(s.label_path, fmt)
        assert got.dtype == np.uint8 and got.shape == ids.shape
        assert np.array_equal(got, lut(fmt)[ids])
        assert np.array_equal(decode_image(s.image_path.read_bytes(), "x").shape, (32, 64, 3))


def test_cityscapes(tmp_path):
    exp = F.write_cityscapes(tmp_path, split="val", cities=("frankfurt", "lindau"))
    F.write_cityscapes(tmp_path, split="train", cities=("aachen",), per_city=1)
    samples = formats.discover("cityscapes", tmp_path, "val", require_labels=True)
    assert samples[0].sample_id == "frankfurt_000000_000019"
    assert samples[0].image_path == tmp_path / "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    assert samples[0].label_path == tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    assert all(s.condition is None for s in samples)
    _check_labels("cityscapes", samples, exp)


def test_gta5_palette_labels_read_as_indices_and_split_lists(tmp_path):
    exp = F.write_gta5(tmp_path, n=4, split_lists={"val": [2, 4]})
    # The label files really are palette PNGs whose colours differ from their indices.
    from PIL import Image

    with Image.open(tmp_path / "labels/00001.png") as img:
        assert img.mode == "P"
    assert cv2.imread(str(tmp_path / "labels/00001.png"), cv2.IMREAD_UNCHANGED).ndim == 3
    _check_labels("gta5", formats.discover("gta5", tmp_path, "all", require_labels=True), exp)
    assert [s.sample_id for s in formats.discover("gta5", tmp_path, "train")] == ["00001", "00002", "00003", "00004"]
    assert [s.sample_id for s in formats.discover("gta5", tmp_path, "val")] == ["00002", "00004"]
    custom = tmp_path / "mine.txt"
    custom.write_text("images/00003.png\n\n00001\n")
    assert [s.sample_id for s in formats.discover("gta5", tmp_path, "x", split_list=custom)] == ["00001", "00003"]
    with pytest.raises(DataError, match=r"split 'test' needs a split list .*gta5_list/test\.txt"):
        formats.discover("gta5", tmp_path, "test")
    custom.write_text("00009.png\n")
    with pytest.raises(DataError, match=r"lists 1 sample\(s\) with no image .*00009"):
        formats.discover("gta5", tmp_path, "x", split_list=custom)


def test_synthia_16bit_first_channel(tmp_path):
    exp = F.write_synthia(tmp_path, n=3)
    label_path = tmp_path / "GT/LABELS/0000001.png"
    raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (32, 64, 3)
    assert np.array_equal(formats.read_label_ids(label_path, "synthia"), exp["0000001"])
    _check_labels("synthia", formats.discover("synthia", tmp_path, "all", require_labels=True), exp)


@pytest.mark.parametrize("old_layout", [False, True])
def test_bdd100k_both_layouts(tmp_path, old_layout):
    exp = F.write_bdd100k(tmp_path, split="val", old_layout=old_layout)
    samples = formats.discover("bdd100k", tmp_path, "val", require_labels=True)
    suffix = "_train_id.png" if old_layout else ".png"
    assert samples[0].label_path.name == samples[0].sample_id + suffix
    assert samples[0].image_path.suffix == ".jpg"
    _check_labels("bdd100k", samples, exp)


def test_acdc_keeps_conditions_and_skips_reference_images(tmp_path):
    exp = F.write_acdc(tmp_path, split="val")
    F.write_acdc(tmp_path, split="train", conditions=("fog",), seed=1)
    samples = formats.discover("acdc", tmp_path, "val", require_labels=True)
    assert {s.sample_id: s.condition for s in samples} == {k: v[1] for k, v in exp.items()}
    assert samples[0].sample_id == "GOPR0400_frame_000000"
    assert samples[0].label_path.name == "GOPR0400_frame_000000_gt_labelIds.png"
    _check_labels("acdc", samples, exp)


def test_mapillary_v12_and_split_alias(tmp_path):
    exp = F.write_mapillary(tmp_path, folder="validation")
    samples = formats.discover("mapillary", tmp_path, "val", require_labels=True)
    assert samples == formats.discover("mapillary", tmp_path, "validation")
    assert samples[0].label_path.parent == tmp_path / "validation/v1.2/labels"
    _check_labels("mapillary", samples, exp)


def test_unlabelled_images_have_no_label_path(tmp_path):
    F.write_cityscapes(tmp_path, cities=("ulm",), per_city=2)
    (tmp_path / "gtFine/train/ulm/ulm_000001_000020_gtFine_labelIds.png").unlink()
    samples = formats.discover("cityscapes", tmp_path, "train")
    assert [s.label_path is None for s in samples] == [False, True]
    with pytest.raises(DataError, match=r"label missing for 1 of 2 .*ulm_000001_000020_leftImg8bit\.png "
                                         r"\(expected .*ulm_000001_000020_gtFine_labelIds\.png\)"):
        formats.discover("cityscapes", tmp_path, "train", require_labels=True)


def test_bad_layouts(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset format 'kitti'"):
        formats.discover("kitti", tmp_path, "train")
    with pytest.raises(DataError, match="does not exist"):
        formats.discover("cityscapes", tmp_path / "nope", "train")
    F.write_gta5(tmp_path / "gta", n=1)
    with pytest.raises(DataError, match=r"not a cityscapes root .*leftImg8bit/train does not exist"):
        formats.discover("cityscapes", tmp_path / "gta", "train")
    (tmp_path / "cs/leftImg8bit/train/bonn").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no cityscapes images for split 'train'"):
        formats.discover("cityscapes", tmp_path / "cs", "train")
    F.write_rgb(tmp_path / "cs/leftImg8bit/train/bonn/bonn_000001.png", F.random_rgb(np.random.default_rng(0)))
    F.write_rgb(tmp_path / "cs/leftImg8bit/train/loose_000000_000001_leftImg8bit.png",
                F.random_rgb(np.random.default_rng(0)))
    with pytest.raises(DataError, match=r"2 image file\(s\) .* do not follow the cityscapes naming .*bonn_000001\.png"):
        formats.discover("cityscapes", tmp_path / "cs", "train")


def test_duplicate_ids_across_acdc_conditions(tmp_path):
    F.write_acdc(tmp_path, split="val", conditions=("fog",))
    src = tmp_path / "rgb_anon/fog/val/GOPR0400/GOPR0400_frame_000000_rgb_anon.png"
    dst = tmp_path / "rgb_anon/rain/val/GOPR0400/GOPR0400_frame_000000_rgb_anon.png"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    with pytest.raises(DataError, match="duplicate sample ids .*GOPR0400_frame_000000"):
        formats.discover("acdc", tmp_path, "val")


# ----------------------------------------------------------------------------------- imageio

def _png(array) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def test_image_roundtrip_rgb_and_png_passthrough():
    rgb = F.random_rgb(np.random.default_rng(1))
    data = encode_png(rgb)
    assert is_png_rgb8(data)
    assert np.array_equal(decode_image(data, "a.png"), rgb)
    assert not is_png_rgb8(encode_png(rgb[:, :, 0]))
    grey = decode_image(_png(rgb[:, :, 0]), "g.png")
    assert grey.shape == (32, 64, 3) and np.array_equal(grey[:, :, 2], rgb[:, :, 0])


@pytest.mark.parametrize("case,pattern", [
    ("empty", r"bad\.png: empty file"),
    ("truncated_png", r"bad\.png: truncated PNG"),
    ("truncated_jpeg", r"bad\.png: truncated JPEG"),
    ("garbage", r"bad\.png: not a decodable image"),
    ("16bit", r"bad\.png: uint16 image where 8-bit is expected"),
])
def test_decode_image_rejects(case, pattern):
    rgb = F.random_rgb(np.random.default_rng(2))
    data = {
        "empty": b"",
        "truncated_png": encode_png(rgb)[:-200],
        "truncated_jpeg": cv2.imencode(".jpg", rgb)[1].tobytes()[:-300],
        "garbage": b"not an image at all" * 10,
        "16bit": _png(rgb.astype(np.uint16) * 257),
    }[case]
    with pytest.raises(DataError, match=pattern):
        decode_image(data, "bad.png")


def test_decode_label_depths_and_channels():
    ids = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) % 40
    assert np.array_equal(decode_label(_png(ids.astype(np.uint8)), "l.png"), ids)
    with pytest.raises(DataError, match=r"l\.png: uint16 label where 8-bit is expected"):
        decode_label(_png(ids), "l.png")
    with pytest.raises(DataError, match=r"l\.png: 3-channel label"):
        decode_label(_png(np.dstack([ids.astype(np.uint8)] * 3)), "l.png")
    with pytest.raises(DataError, match=r"l\.png: uint8 label where 16-bit is expected"):
        decode_label(_png(ids.astype(np.uint8)), "l.png", bits=16)
    assert np.array_equal(decode_label(_png(ids * 1000), "l.png", bits=16), ids * 1000)
