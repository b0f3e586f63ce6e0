"""Tiny dataset trees in each format's real on-disk naming convention, for tests and benchmarks.

Each writer fills `root` and returns {sample_id: raw label ids (HxW, the dataset's own ids)} so a
test can compute the expected train ids independently. Images are random RGB; labels draw from
the ids the format really uses. Files are written the way the datasets ship them: GTA5 and
Mapillary labels as palette ('P' mode) PNGs, SYNTHIA labels as 16-bit 3-channel PNGs with the id
in the first channel, BDD100K and Mapillary images as JPEG.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dakd_core.labels import (BDD100K_TO_TRAIN, CITYSCAPES_TO_TRAIN, MAPILLARY_V12_TO_TRAIN,
                              PALETTE, SYNTHIA_TO_TRAIN)

SIZE = (64, 32)  # (W, H)


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_rgb(rng: np.random.Generator, size=SIZE) -> np.ndarray:
    w, h = size
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def random_ids(rng: np.random.Generator, ids, size=SIZE, dtype=np.uint8) -> np.ndarray:
    w, h = size
    return rng.choice(np.asarray(sorted(ids)), size=(h, w)).astype(dtype)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """PNG or JPEG by suffix (cv2 writes BGR, so flip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, rgb[:, :, ::-1])
    assert ok
    path.write_bytes(buf.tobytes())


def write_gray(path: Path, ids: np.ndarray) -> None:
    """Single-channel PNG (8- or 16-bit by dtype)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), ids)


def write_palette(path: Path, ids: np.ndarray) -> None:
    """A real 'P'-mode PNG: pixel values are palette indices, colours are the Cityscapes palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = ids.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(ids, dtype=np.uint8).tobytes())
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(PALETTE)] = PALETTE
    palette[len(PALETTE):] = 37  # colours unrelated to the indices
    img.putpalette(palette.ravel().tolist())
    img.save(path)


def write_synthia_label(path: Path, ids: np.ndarray, rng: np.random.Generator) -> None:
    """16-bit, 3 channels: class id in the PNG's first (R) channel, instance ids in the second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = ids.shape
    rgb = np.zeros((h, w, 3), dtype=np.uint16)
    rgb[:, :, 0] = ids
    rgb[:, :, 1] = rng.integers(0, 3000, size=(h, w), dtype=np.uint16)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])  # cv2 writes BGR: reverse so R is first


def write_cityscapes(root: Path, split="train", cities=("frankfurt", "aachen"), per_city=2, seed=0,
                     size=SIZE) -> dict[str, np.ndarray]:
    rng, out = _rng(seed), {}
    for city in cities:
        for k in range(per_city):
            sid = f"{city}_{k:06d}_{19 + k:06d}"
            write_rgb(root / "leftImg8bit" / split / city / f"{sid}_leftImg8bit.png", random_rgb(rng, size))
            ids = random_ids(rng, CITYSCAPES_TO_TRAIN, size)
            write_gray(root / "gtFine" / split / city / f"{sid}_gtFine_labelIds.png", ids)
            # The other gtFine files sit beside labelIds and must be ignored.
            write_rgb(root / "gtFine" / split / city / f"{sid}_gtFine_color.png", random_rgb(rng, size))
            out[sid] = ids
    return out


def write_gta5(root: Path, n=3, seed=0, size=SIZE, split_lists: dict[str, list[int]] | None = None):
    rng, out = _rng(seed), {}
    for k in range(1, n + 1):
        sid = f"{k:05d}"
        write_rgb(root / "images" / f"{sid}.png", random_rgb(rng, size))
        ids = random_ids(rng, CITYSCAPES_TO_TRAIN, size)
        write_palette(root / "labels" / f"{sid}.png", ids)
        out[sid] = ids
    for split, numbers in (split_lists or {}).items():
        (root / "gta5_list").mkdir(exist_ok=True)
        (root / "gta5_list" / f"{split}.txt").write_text("".join(f"{i:05d}.png\n" for i in numbers))
    return out


def write_synthia(root: Path, n=3, seed=0, size=SIZE) -> dict[str, np.ndarray]:
    rng, out = _rng(seed), {}
    for k in range(n):
        sid = f"{k:07d}"
        write_rgb(root / "RGB" / f"{sid}.png", random_rgb(rng, size))
        ids = random_ids(rng, SYNTHIA_TO_TRAIN, size, dtype=np.uint16)
        write_synthia_label(root / "GT" / "LABELS" / f"{sid}.png", ids, rng)
        out[sid] = ids
    return out


def write_bdd100k(root: Path, split="train", n=3, seed=0, size=SIZE, old_layout=False):
    rng, out = _rng(seed), {}
    for k in range(n):
        sid = f"7d2f7975-e0c1c5{k:02d}"
        if old_layout:
            image = root / "seg" / "images" / split / f"{sid}.jpg"
            label = root / "seg" / "labels" / split / f"{sid}_train_id.png"
        else:
            image = root / "images" / "10k" / split / f"{sid}.jpg"
            label = root / "labels" / "sem_seg" / "masks" / split / f"{sid}.png"
        write_rgb(image, random_rgb(rng, size))
        ids = random_ids(rng, BDD100K_TO_TRAIN, size)
        write_gray(label, ids)
        out[sid] = ids
    return out


def write_acdc(root: Path, split="val", conditions=("fog", "night", "rain", "snow"), seed=0, size=SIZE):
    """One sequence and one frame per condition; returns {sample_id: (ids, condition)}."""
    rng, out = _rng(seed), {}
    for c, cond in enumerate(conditions):
        seq = f"GOPR04{c:02d}"
        stem = f"{seq}_frame_{c:06d}"
        write_rgb(root / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png", random_rgb(rng, size))
        # Reference images (same place, other time) live in {split}_ref and are not samples.
        write_rgb(root / "rgb_anon" / cond / f"{split}_ref" / seq / f"{stem}_rgb_ref_anon.png", random_rgb(rng, size))
        ids = random_ids(rng, CITYSCAPES_TO_TRAIN, size)
        write_gray(root / "gt" / cond / split / seq / f"{stem}_gt_labelIds.png", ids)
        out[stem] = (ids, cond)
    return out


def write_mapillary(root: Path, folder="training", n=3, seed=0, size=SIZE) -> dict[str, np.ndarray]:
    rng, out = _rng(seed), {}
    for k in range(n):
        sid = f"-0Bx9kPeK{k}xZ3mcQ_kvn2Q"
        write_rgb(root / folder / "images" / f"{sid}.jpg", random_rgb(rng, size))
        ids = random_ids(rng, MAPILLARY_V12_TO_TRAIN, size)
        write_palette(root / folder / "v1.2" / "labels" / f"{sid}.png", ids)
        out[sid] = ids
    return out
