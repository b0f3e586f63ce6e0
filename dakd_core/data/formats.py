"""On-disk layouts of the supported datasets: discovery of (image, label) pairs and label reading.

Each layout maps an image's path (relative to its image directory) to a sample id and the path
its label must have; discovery is strict: an image file that does not follow the naming
convention is an error naming it, because a wrongly laid-out root must not ingest half a dataset.

    cityscapes  leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
                gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
    gta5        images/00001.png + labels/00001.png (palette PNG)       split list or all files
    synthia     RGB/0000000.png + GT/LABELS/0000000.png (16-bit, id in channel 1)   same
    bdd100k     images/10k/{split}/*.jpg + labels/sem_seg/masks/{split}/*.png
                or seg/images/{split}/*.jpg + seg/labels/{split}/*_train_id.png
    acdc        rgb_anon/{cond}/{split}/{seq}/*_rgb_anon.png
                gt/{cond}/{split}/{seq}/*_gt_labelIds.png            cond in fog/night/rain/snow
    mapillary   {split}/images/*.jpg + {split}/v1.2/labels/*.png    (train/val = training/validation)

A root is a directory, `pvc://CLAIM/path` (the claim's mount) or an object-store prefix
`s3://bucket/prefix` (dakd_core/data/source.py): the same layouts are discovered on each, and a
Sample's paths are then `StorePath`s whose `read_bytes()` reads the object.

GTA5 and SYNTHIA ship no split files: a split list (one file name or stem per line) is taken from
`split_list`, else `{root}/{fmt}_list/{split}.txt`, else `{root}/{split}.txt`; without one, the
splits 'all' and 'train' mean every file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple

import numpy as np

from dakd_core.data.imageio import decode_label
from dakd_core.data.source import AnyPath, StorePath, source_file, source_path
from dakd_core.errors import ConfigError, DataError, StoreError
from dakd_core.labels import FORMATS, to_train_ids

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
_MAPILLARY_SPLITS = {"train": "training", "val": "validation", "test": "testing"}
_MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    sample_id: str
    image_path: AnyPath
    label_path: AnyPath | None  # None when the label file does not exist
    condition: str | None = None  # ACDC weather condition


class _Candidate(NamedTuple):
    sample_id: str
    image_path: AnyPath
    label_path: AnyPath  # where the label must be
    condition: str | None


class _Layout(NamedTuple):
    image_dir: AnyPath  # must exist
    pattern: str  # naming convention, for messages
    # relative image path -> (sample_id, label path, condition) or None if it breaks the convention
    match: Callable[[PurePosixPath], tuple[str, AnyPath, str | None] | None]
    depth: int  # directory levels between image_dir and the image files
    uses_split_list: bool = False
    # Folders under image_dir holding this split (default: all of image_dir); ACDC keeps every
    # split and the *_ref images side by side under each condition.
    scan_dirs: Callable[[AnyPath], list[AnyPath]] | None = None


def _cityscapes(root: AnyPath, split: str) -> _Layout:
    rx = re.compile(r"^(?P<id>(?P<city>[^/]+)_\d{6}_\d{6})_leftImg8bit\.png$")

    def match(rel: PurePosixPath):
        m = rx.match(rel.name)
        if not m or m["city"] != rel.parent.name:
            return None
        return m["id"], root / "gtFine" / split / rel.parent / f"{m['id']}_gtFine_labelIds.png", None

    return _Layout(root / "leftImg8bit" / split, "{city}/{city}_{seq:6}_{frame:6}_leftImg8bit.png", match, 1)


def _numbered(root: AnyPath, image_sub: str, label_sub: str) -> _Layout:
    """GTA5 and SYNTHIA: numbered PNGs with the label of the same name in a sibling folder."""
    rx = re.compile(r"^(?P<id>\d+)\.png$")

    def match(rel: PurePosixPath):
        m = rx.match(rel.name)
        return (m["id"], root / label_sub / rel.name, None) if m else None

    return _Layout(root / image_sub, "<number>.png", match, 0, uses_split_list=True)


def _bdd100k(root: AnyPath, split: str) -> _Layout:
    new_images = root / "images" / "10k" / split
    old_images = root / "seg" / "images" / split
    rx = re.compile(r"^(?P<id>[^/]+)\.jpe?g$")
    if new_images.is_dir() or not old_images.is_dir():
        label_dir, label_suffix, image_dir = root / "labels" / "sem_seg" / "masks" / split, ".png", new_images
    else:
        label_dir, label_suffix, image_dir = root / "seg" / "labels" / split, "_train_id.png", old_images

    def match(rel: PurePosixPath):
        m = rx.match(rel.name)
        return (m["id"], label_dir / f"{m['id']}{label_suffix}", None) if m else None

    return _Layout(image_dir, "<name>.jpg", match, 0)


def _acdc(root: AnyPath, split: str) -> _Layout:
    rx = re.compile(r"^(?P<id>.+)_rgb_anon\.png$")

    def match(rel: PurePosixPath):
        # rel = {cond}/{split}/{seq}/{stem}_rgb_anon.png
        parts = rel.parts
        m = rx.match(rel.name)
        if len(parts) != 4 or not m or parts[0] not in ACDC_CONDITIONS or parts[1] != split:
            return None
        label = root / "gt" / parts[0] / split / parts[2] / f"{m['id']}_gt_labelIds.png"
        return m["id"], label, parts[0]

    def scan_dirs(image_dir: AnyPath) -> list[AnyPath]:
        return sorted(d for d in image_dir.glob(f"*/{split}") if d.is_dir())

    return _Layout(root / "rgb_anon", "{fog|night|rain|snow}/{split}/{seq}/<name>_rgb_anon.png", match, 3,
                   scan_dirs=scan_dirs)


def _mapillary(root: AnyPath, split: str) -> _Layout:
    folder = split if (root / split).is_dir() else _MAPILLARY_SPLITS.get(split, split)
    rx = re.compile(r"^(?P<id>[^/]+)\.jpe?g$")

    def match(rel: PurePosixPath):
        m = rx.match(rel.name)
        return (m["id"], root / folder / "v1.2" / "labels" / f"{m['id']}.png", None) if m else None

    return _Layout(root / folder / "images", "<key>.jpg", match, 0)


_LAYOUTS: dict[str, Callable[[AnyPath, str], _Layout]] = {
    "cityscapes": _cityscapes,
    "gta5": lambda root, split: _numbered(root, "images", "labels"),
    "synthia": lambda root, split: _numbered(root, "RGB", "GT/LABELS"),
    "bdd100k": _bdd100k,
    "acdc": _acdc,
    "mapillary": _mapillary,
}
# How each format's label files are decoded: SYNTHIA ids are 16-bit.
LABEL_BITS = {fmt: 16 if fmt == "synthia" else 8 for fmt in FORMATS}
assert set(_LAYOUTS) == set(FORMATS)


def _check_format(fmt: str) -> None:
    if fmt not in _LAYOUTS:
        raise ConfigError(f"field 'format': unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})")


def _unreadable_dir(err: OSError):
    raise DataError(f"cannot read directory {err.filename}: {err.strerror or err}")


def _walk(top: AnyPath):
    """(directory, subdirectory names, file names) under `top`, on a filesystem or a store."""
    if isinstance(top, StorePath):
        return top.walk()
    return ((Path(d), dirs, files) for d, dirs, files in os.walk(top, onerror=_unreadable_dir))


def _image_files(layout: _Layout) -> tuple[list[PurePosixPath], list[PurePosixPath]]:
    """Image files (relative to image_dir) exactly `depth` folders down, and those at other depths.

    os.walk, not Path.rglob: rglob skips a directory it cannot read without a word, which would
    ingest part of a split. A directory with an image's name is where an image file belongs: an
    error, not something to step over."""
    found, misplaced, not_files = [], [], []
    dirs = layout.scan_dirs(layout.image_dir) if layout.scan_dirs else [layout.image_dir]
    for top in dirs:
        for dirpath, dirnames, filenames in _walk(top):
            not_files += [dirpath / d for d in dirnames if Path(d).suffix.lower() in IMAGE_SUFFIXES]
            for name in filenames:
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    rel = (dirpath / name).relative_to(layout.image_dir)
                    (found if len(rel.parts) == layout.depth + 1 else misplaced).append(rel)
    if not_files:
        raise DataError(f"{len(not_files)} image path(s) under {layout.image_dir} are directories, "
                        f"not files: {_listing(sorted(not_files))}")
    return sorted(found), sorted(misplaced)


def _label_exists(path: AnyPath) -> bool:
    """True for a label file, False when nothing is there; DataError for a directory in its place
    or a folder that cannot be searched (is_file() would raise PermissionError, or say False)."""
    if isinstance(path, StorePath):
        if path.is_dir():
            raise DataError(f"label {path} is a prefix of other objects, not a file")
        return path.is_file()
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise DataError(f"cannot read label {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"label {path} is a directory, not a file")
    return True


def _listing(paths: list) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    return shown + (f" ... ({len(paths)} in all)" if len(paths) > _MAX_LISTED else "")


def _read_split_list(root: AnyPath, fmt: str, split: str, split_list: str | Path | None) -> set[str] | None:
    """Stems named by the split list, or None when every file belongs to the split."""
    if split_list is not None:
        path = source_file(split_list, "split_list")
        if not path.is_file():
            raise DataError(f"split list {path} does not exist (field 'split_list')")
    else:
        candidates = [root / f"{fmt}_list" / f"{split}.txt", root / f"{split}.txt"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            if split in ("all", "train"):
                return None
            raise DataError(
                f"{fmt} has no official splits: split '{split}' needs a split list "
                f"({' or '.join(str(p) for p in candidates)}, or --split-list); 'all'/'train' take every file"
            )
    stems = {Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()}
    if not stems:
        raise DataError(f"split list {path} is empty")
    return stems


def discover(
    fmt: str,
    root: str | Path,
    split: str,
    *,
    require_labels: bool = False,
    split_list: str | Path | None = None,
) -> list[Sample]:
    """Samples of `split` under `root` in the format's layout, sorted by sample id.

    Errors (DataError naming the path): missing root or image folder, unreadable folders, no
    images, files breaking the naming convention, directories named like an image or a label,
    duplicate ids, split-list entries without an image, and - with require_labels - images whose
    label file is missing.
    """
    _check_format(fmt)
    given, root = str(root), source_path(root)
    if not root.is_dir():
        # A pvc:// root that is missing most likely means the task did not mount the claim.
        hint = f" ({given}: is the claim mounted at {root}?)" if given.startswith("pvc://") else ""
        raise DataError(f"dataset root {root} does not exist or is not a directory{hint}")
    layout = _LAYOUTS[fmt](root, split)
    if not layout.image_dir.is_dir():
        raise DataError(
            f"{root} is not a {fmt} root for split '{split}': image folder {layout.image_dir} does not exist"
        )
    files, misplaced = _image_files(layout)
    candidates, broken = [], list(misplaced)
    for rel in files:
        matched = layout.match(rel)
        if matched is None:
            broken.append(rel)
        else:
            candidates.append(_Candidate(matched[0], layout.image_dir / rel, matched[1], matched[2]))
    if broken:
        raise DataError(
            f"{len(broken)} image file(s) under {layout.image_dir} do not follow the {fmt} naming "
            f"convention {layout.pattern}: {_listing(broken)}"
        )
    if layout.uses_split_list:
        wanted = _read_split_list(root, fmt, split, split_list)
        if wanted is not None:
            missing = sorted(wanted - {c.sample_id for c in candidates})
            if missing:
                raise DataError(f"split '{split}' lists {len(missing)} sample(s) with no image in "
                                f"{layout.image_dir}: {_listing(missing)}")
            candidates = [c for c in candidates if c.sample_id in wanted]
    if not candidates:
        raise DataError(f"no {fmt} images for split '{split}' in {layout.image_dir} (expected {layout.pattern})")
    candidates.sort(key=lambda c: c.sample_id)
    dupes = sorted({a.sample_id for a, b in zip(candidates, candidates[1:]) if a.sample_id == b.sample_id})
    if dupes:
        raise DataError(f"duplicate sample ids under {layout.image_dir}: {_listing(dupes)}")
    samples = [
        Sample(c.sample_id, c.image_path, c.label_path if _label_exists(c.label_path) else None, c.condition)
        for c in candidates
    ]
    if require_labels:
        unlabelled = [c for c, s in zip(candidates, samples) if s.label_path is None]
        if unlabelled:
            raise DataError(
                f"label missing for {len(unlabelled)} of {len(samples)} {fmt} images: "
                + _listing([f"{c.image_path} (expected {c.label_path})" for c in unlabelled])
            )
    return samples


def read_label_ids(path: str | Path, fmt: str) -> np.ndarray:
    """The raw dataset ids of a label file (uint8, or uint16 for SYNTHIA)."""
    _check_format(fmt)
    path = source_file(path, "label")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read label {path}: {e.strerror}") from None
    except StoreError as e:
        raise DataError(f"cannot read label {path}: {e}") from None
    return decode_label(data, str(path), bits=LABEL_BITS[fmt])


def read_label(path: str | Path, fmt: str, unknown: str = "error") -> np.ndarray:
    """A label file of format `fmt` -> HxW uint8 train ids (255 = ignore)."""
    return to_train_ids(read_label_ids(path, fmt), fmt, unknown, name=str(path))
