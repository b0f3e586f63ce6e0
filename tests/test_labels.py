"""The taxonomy and remap tables, checked against the official Cityscapes label definitions."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels
from cityscapesscripts.helpers.labels import name2label

from dakd_core import labels as L
from dakd_core.errors import ConfigError, DataError

OFFICIAL_TRAIN = sorted((l for l in cs_labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)


def test_taxonomy_matches_cityscapes_train_classes():
    assert L.NUM_CLASSES == 19 == len(OFFICIAL_TRAIN) and L.IGNORE_INDEX == 255
    assert list(L.CLASS_NAMES) == [l.name for l in OFFICIAL_TRAIN]
    assert L.PALETTE.shape == (19, 3) and L.PALETTE.dtype == np.uint8
    assert [tuple(c) for c in L.PALETTE.tolist()] == [l.color for l in OFFICIAL_TRAIN]


@pytest.mark.parametrize("fmt", ["cityscapes", "gta5", "acdc"])
def test_labelid_formats_match_cityscapesscripts(fmt):
    table = L.lut(fmt)
    assert table.shape == (65536,) and table.dtype == np.uint8
    for label in cs_labels:
        if label.id >= 0:
            expected = 255 if label.trainId in (-1, 255) else label.trainId
            assert table[label.id] == expected, (fmt, label.name)
    assert L.known_ids(fmt).sum() == 34  # ids 0..33


# SYNTHIA README class names -> Cityscapes label name (None: no counterpart, ignored).
SYNTHIA_NAMES = {
    0: None, 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation",
    7: "pole", 8: "car", 9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle",
    13: "parking", 14: None, 15: "traffic light", 16: "terrain", 17: "rider", 18: "truck",
    19: "bus", 20: "train", 21: "wall", 22: None,
}


def _official_train_id(cs_name):
    if cs_name is None:
        return 255
    t = name2label[cs_name].trainId
    return 255 if t in (-1, 255) else t


def test_synthia_table_follows_cityscapes_names_and_subsets():
    table = L.lut("synthia")
    for sid, cs_name in SYNTHIA_NAMES.items():
        assert table[sid] == _official_train_id(cs_name), sid
    assert L.known_ids("synthia").sum() == 23
    names = {L.CLASS_NAMES[i] for i in L.SYNTHIA_16}
    assert len(L.SYNTHIA_16) == 16 and names.isdisjoint({"terrain", "truck", "train"})
    assert set(L.SYNTHIA_13) == set(L.SYNTHIA_16) - {3, 4, 5}  # minus wall, fence, pole


# Mapillary v1.2 name (by id) -> Cityscapes label whose definition covers it.
MAPILLARY_NAMES = {
    2: "sidewalk", 3: "fence", 4: "guard rail", 6: "wall", 7: "road", 8: "road", 9: "sidewalk",
    10: "parking", 11: "sidewalk", 12: "rail track", 13: "road", 14: "road", 15: "sidewalk",
    16: "bridge", 17: "building", 18: "tunnel", 19: "person", 20: "rider", 21: "rider", 22: "rider",
    23: "road", 24: "road", 25: "terrain", 26: "terrain", 27: "sky", 29: "terrain", 30: "vegetation",
    41: "road", 43: "road", 44: "pole", 45: "pole", 46: "pole", 47: "pole", 48: "traffic light",
    50: "traffic sign", 52: "bicycle", 54: "bus", 55: "car", 56: "caravan", 57: "motorcycle",
    58: "train", 60: "trailer", 61: "truck", 64: "ego vehicle", 65: "unlabeled",
}


def test_mapillary_table_has_66_ids_and_follows_cityscapes_definitions():
    assert sorted(L.MAPILLARY_V12_TO_TRAIN) == list(range(66))
    table = L.lut("mapillary")
    for mid in range(66):
        assert table[mid] == _official_train_id(MAPILLARY_NAMES.get(mid)), mid
    # every train class is reachable
    assert set(table[:66]) - {255} == set(range(19))


def test_bdd100k_ids_are_train_ids():
    table = L.lut("bdd100k")
    assert (table[:19] == np.arange(19)).all() and table[255] == 255
    assert not L.known_ids("bdd100k")[19:255].any()


def test_remap_counts_and_unknown_ids():
    label = np.array([[7, 8, 8], [0, 33, 40]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"x\.png: label ids \[40\] are outside the 'cityscapes' table"):
        L.to_train_ids(label, "cityscapes", name="x.png")
    r = L.remap(label, "cityscapes", unknown="ignore")
    assert r.train_ids.tolist() == [[0, 1, 1], [255, 18, 255]] and r.train_ids.dtype == np.uint8
    assert r.unknown_ids == [40] and r.unknown_pixels == 1
    expected = np.zeros(19, np.int64)
    expected[[0, 1, 18]] = [1, 2, 1]
    assert r.class_pixels.tolist() == expected.tolist()


def test_remap_16bit_and_bad_inputs():
    label = np.array([[3, 21, 300]], dtype=np.uint16)
    r = L.remap(label, "synthia", unknown="ignore")
    assert r.train_ids.tolist() == [[0, 3, 255]] and r.unknown_ids == [300]
    with pytest.raises(ConfigError, match="unknown dataset format 'kitti'"):
        L.lut("kitti")
    with pytest.raises(DataError, match="HxW uint8/uint16"):
        L.to_train_ids(np.zeros((2, 2), np.int32), "cityscapes")
    with pytest.raises(ConfigError, match="unknown_ids"):
        L.to_train_ids(np.zeros((2, 2), np.uint8), "cityscapes", unknown="drop")


def test_colorize():
    rgb = L.colorize(np.array([[0, 18, 255]], np.uint8))
    assert rgb.tolist() == [[[128, 64, 128], [119, 11, 32], [0, 0, 0]]]
