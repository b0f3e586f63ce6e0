"""The 19-class Cityscapes train-id taxonomy and the tables that map each dataset's ids onto it.

Every dataset's label ids go through one vectorised lookup table (LUT) of 65536 entries (SYNTHIA
labels are 16-bit). Ids a format's table does not list are "unknown": by default an error naming
the ids (a wrong --format or corrupt labels must not train silently), or mapped to 255 on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from dakd_core.errors import ConfigError, DataError

NUM_CLASSES = 19
IGNORE_INDEX = 255
LUT_SIZE = 1 << 16

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Official Cityscapes colours of the train classes (cityscapesscripts helpers/labels.py).
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

# SYNTHIA has no terrain, truck or train: its protocol scores 16 classes, and 13 without the
# wall/fence/pole "structure" classes.
SYNTHIA_16 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13 = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)

_I = IGNORE_INDEX

# Cityscapes labelIds (gtFine *_labelIds.png) -> train id. Same table as cityscapesscripts; ids
# 0-33 only (license plate, id -1, is never drawn into labelIds images).
CITYSCAPES_TO_TRAIN = {
    0: _I, 1: _I, 2: _I, 3: _I, 4: _I, 5: _I, 6: _I,  # unlabeled .. ground (void)
    7: 0, 8: 1,  # road, sidewalk
    9: _I, 10: _I,  # parking, rail track
    11: 2, 12: 3, 13: 4,  # building, wall, fence
    14: _I, 15: _I, 16: _I,  # guard rail, bridge, tunnel
    17: 5, 18: _I,  # pole, polegroup
    19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15,
    29: _I, 30: _I,  # caravan, trailer
    31: 16, 32: 17, 33: 18,  # train, motorcycle, bicycle
}

# SYNTHIA-RAND-CITYSCAPES GT/LABELS ids (its README) -> train id.
SYNTHIA_TO_TRAIN = {
    0: _I,  # void
    1: 10,  # sky
    2: 2,  # building
    3: 0,  # road
    4: 1,  # sidewalk
    5: 4,  # fence
    6: 8,  # vegetation
    7: 5,  # pole
    8: 13,  # car
    9: 7,  # traffic sign
    10: 11,  # pedestrian -> person
    11: 18,  # bicycle
    12: 17,  # motorcycle
    13: _I,  # parking-slot: Cityscapes ignores parking
    14: _I,  # road-work
    15: 6,  # traffic light
    16: 9,  # terrain (listed, never occurs)
    17: 12,  # rider
    18: 14,  # truck (listed, never occurs)
    19: 15,  # bus
    20: 16,  # train (listed, never occurs)
    21: 3,  # wall
    22: _I,  # lanemarking: ignored, as in the SYNTHIA->Cityscapes protocol
}

# BDD100K sem_seg masks and the older *_train_id.png are already Cityscapes train ids.
BDD100K_TO_TRAIN = {**{i: i for i in range(NUM_CLASSES)}, _I: _I}

# Mapillary Vistas v1.2 (66 classes, ids = position in config_v1.2.json) -> train id.
# Rules: a Mapillary class maps to the Cityscapes class its annotation guide puts it in (road
# includes bike lanes, markings, manholes; sidewalk includes curbs and pedestrian areas; pole
# includes street lights and sign frames); classes Cityscapes itself ignores (parking, rail track,
# guard rail, bridge, tunnel, caravan, trailer) or has no counterpart for are 255.
MAPILLARY_V12_TO_TRAIN = {
    0: _I,  # animal--bird
    1: _I,  # animal--ground-animal
    2: 1,  # construction--barrier--curb -> sidewalk
    3: 4,  # construction--barrier--fence -> fence
    4: _I,  # construction--barrier--guard-rail (ignored by Cityscapes)
    5: _I,  # construction--barrier--other-barrier
    6: 3,  # construction--barrier--wall -> wall
    7: 0,  # construction--flat--bike-lane -> road
    8: 0,  # construction--flat--crosswalk-plain -> road
    9: 1,  # construction--flat--curb-cut -> sidewalk
    10: _I,  # construction--flat--parking (ignored by Cityscapes)
    11: 1,  # construction--flat--pedestrian-area -> sidewalk
    12: _I,  # construction--flat--rail-track (ignored by Cityscapes)
    13: 0,  # construction--flat--road -> road
    14: 0,  # construction--flat--service-lane -> road
    15: 1,  # construction--flat--sidewalk -> sidewalk
    16: _I,  # construction--structure--bridge (ignored by Cityscapes)
    17: 2,  # construction--structure--building -> building
    18: _I,  # construction--structure--tunnel (ignored by Cityscapes)
    19: 11,  # human--person -> person
    20: 12,  # human--rider--bicyclist -> rider
    21: 12,  # human--rider--motorcyclist -> rider
    22: 12,  # human--rider--other-rider -> rider
    23: 0,  # marking--crosswalk-zebra -> road
    24: 0,  # marking--general -> road
    25: 9,  # nature--mountain -> terrain
    26: 9,  # nature--sand -> terrain
    27: 10,  # nature--sky -> sky
    28: _I,  # nature--snow: lies on road, sidewalk or terrain alike, so no single class
    29: 9,  # nature--terrain -> terrain
    30: 8,  # nature--vegetation -> vegetation
    31: _I,  # nature--water
    32: _I,  # object--banner
    33: _I,  # object--bench
    34: _I,  # object--bike-rack
    35: _I,  # object--billboard
    36: _I,  # object--catch-basin
    37: _I,  # object--cctv-camera
    38: _I,  # object--fire-hydrant
    39: _I,  # object--junction-box
    40: _I,  # object--mailbox
    41: 0,  # object--manhole -> road
    42: _I,  # object--phone-booth
    43: 0,  # object--pothole -> road
    44: 5,  # object--street-light -> pole
    45: 5,  # object--support--pole -> pole
    46: 5,  # object--support--traffic-sign-frame -> pole
    47: 5,  # object--support--utility-pole -> pole
    48: 6,  # object--traffic-light -> traffic light
    49: _I,  # object--traffic-sign--back (Cityscapes labels only sign fronts)
    50: 7,  # object--traffic-sign--front -> traffic sign
    51: _I,  # object--trash-can
    52: 18,  # object--vehicle--bicycle -> bicycle
    53: _I,  # object--vehicle--boat
    54: 15,  # object--vehicle--bus -> bus
    55: 13,  # object--vehicle--car -> car
    56: _I,  # object--vehicle--caravan (ignored by Cityscapes)
    57: 17,  # object--vehicle--motorcycle -> motorcycle
    58: 16,  # object--vehicle--on-rails -> train
    59: _I,  # object--vehicle--other-vehicle
    60: _I,  # object--vehicle--trailer (ignored by Cityscapes)
    61: 14,  # object--vehicle--truck -> truck
    62: _I,  # object--vehicle--wheeled-slow
    63: _I,  # void--car-mount
    64: _I,  # void--ego-vehicle
    65: _I,  # void--unlabeled
}

# Format name -> id table. GTA5 and ACDC annotate in Cityscapes labelIds.
TABLES: dict[str, dict[int, int]] = {
    "cityscapes": CITYSCAPES_TO_TRAIN,
    "gta5": CITYSCAPES_TO_TRAIN,
    "synthia": SYNTHIA_TO_TRAIN,
    "bdd100k": BDD100K_TO_TRAIN,
    "acdc": CITYSCAPES_TO_TRAIN,
    "mapillary": MAPILLARY_V12_TO_TRAIN,
}
FORMATS = tuple(TABLES)


def _table(fmt: str) -> dict[int, int]:
    try:
        return TABLES[fmt]
    except KeyError:
        raise ConfigError(f"field 'format': unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})") from None


@lru_cache(maxsize=None)
def lut(fmt: str) -> np.ndarray:
    """65536-entry uint8 LUT: id -> train id; ids outside the table -> 255. Read-only."""
    table = np.full(LUT_SIZE, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in _table(fmt).items():
        table[src] = dst
    table.setflags(write=False)
    return table


@lru_cache(maxsize=None)
def known_ids(fmt: str) -> np.ndarray:
    """65536-entry bool mask of the ids the format's table lists."""
    mask = np.zeros(LUT_SIZE, dtype=bool)
    mask[list(_table(fmt))] = True
    mask.setflags(write=False)
    return mask


class UnknownLabelIdsError(DataError):
    """A label holds ids its format's table does not list; `ids` and `name` say which and where."""

    def __init__(self, ids: list[int], fmt: str, name: str):
        self.ids, self.fmt, self.name = ids, fmt, name
        super().__init__(f"{name}: label ids {ids} are outside the '{fmt}' table")


@dataclass(frozen=True)
class Remapped:
    train_ids: np.ndarray  # HxW uint8
    class_pixels: np.ndarray  # (19,) int64
    unknown_ids: list[int]  # ids outside the table (mapped to 255)
    unknown_pixels: int


def remap(label: np.ndarray, fmt: str, unknown: str = "error", name: str = "<label>") -> Remapped:
    """Map raw ids to train ids and count pixels per class, in one histogram and one LUT pass.

    unknown="error" raises UnknownLabelIdsError naming `name`; "ignore" maps them to 255.
    """
    if unknown not in ("error", "ignore"):
        raise ConfigError(f"'unknown_ids' must be 'error' or 'ignore', got {unknown!r}")
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{name}: label must be a HxW uint8/uint16 id map, got {label.dtype} {label.shape}")
    table = lut(fmt)
    # One histogram of raw ids gives both the unknown ids and the class counts.
    hist = np.bincount(label.ravel(), minlength=256 if label.dtype == np.uint8 else LUT_SIZE)
    present = np.flatnonzero(hist)
    unknown_list = [int(i) for i in present[~known_ids(fmt)[present]]]
    if unknown_list and unknown == "error":
        raise UnknownLabelIdsError(unknown_list, fmt, name)
    # Pixels per train id: the id histogram summed through the LUT (float64 is exact below 2**53).
    per_train_id = np.bincount(table[: hist.size], weights=hist, minlength=256)
    class_pixels = per_train_id[:NUM_CLASSES].round().astype(np.int64)
    if label.dtype == np.uint8:
        # cv2.LUT releases the GIL and is several times faster than numpy fancy indexing.
        train_ids = cv2.LUT(np.ascontiguousarray(label), table[:256])
    else:
        train_ids = table[label]
    return Remapped(train_ids, class_pixels,
                    unknown_list, int(hist[unknown_list].sum()) if unknown_list else 0)


def to_train_ids(label: np.ndarray, fmt: str, unknown: str = "error", name: str = "<label>") -> np.ndarray:
    """Raw dataset ids (HxW uint8/uint16) -> HxW uint8 train ids (255 = ignore)."""
    return remap(label, fmt, unknown, name).train_ids


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """HxW train ids -> HxWx3 uint8 RGB in the Cityscapes palette; ignore (and >18) black."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:NUM_CLASSES] = PALETTE
    return colours[np.asarray(train_ids, dtype=np.uint8)]
