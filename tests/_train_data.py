"""Tiny labelled/unlabelled splits for the training tests: 64x32 PNGs + a real manifest.

Scenes are three horizontal/vertical class regions (road, building, vegetation) with noise; the
"target" domain is the same layout with shifted colours, so adaptation has a domain gap to close.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dakd_core.data.imageio import encode_png
from dakd_core.data.manifest import write_manifest
from dakd_core.storage import open_store

CLASSES = (0, 2, 8)  # road, building, vegetation
COLOURS = {"source": np.array([[128, 64, 128], [70, 70, 70], [107, 142, 35]]),
           "target": np.array([[168, 104, 88], [110, 90, 60], [147, 182, 75]])}


def scene(rng: np.random.Generator, domain: str, size=(32, 64)) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    region = np.zeros((h, w), np.int64)
    region[int(rng.integers(h // 3, 2 * h // 3)):] = 1
    region[:, : int(rng.integers(w // 5, w // 2))] = 2
    image = COLOURS[domain][region] + rng.normal(0, 12, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), np.array(CLASSES, np.uint8)[region]


def make_split(store_uri: str, name: str, n: int, domain: str, seed: int, labelled: bool = True) -> str:
    """Write `n` samples and their manifest under `{store}/datasets/{name}/train/`; returns its URI."""
    store = open_store(store_uri)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image, label = scene(rng, domain)
        png = encode_png(image)
        image_uri = store.put_bytes(f"datasets/{name}/train/images/{i:03d}.png", png)
        label_uri = store.put_bytes(f"datasets/{name}/train/labels/{i:03d}.png", encode_png(label)) if labelled else None
        counts = np.bincount(label.reshape(-1), minlength=19)[:19].tolist()
        rows.append({"sample_id": f"{name}-{i:03d}", "split": "train", "domain": domain, "condition": None,
                     "image_uri": image_uri, "label_uri": label_uri, "height": 32, "width": 64,
                     "sha256": hashlib.sha256(png).hexdigest(), "class_pixels": counts})
    return write_manifest(store, f"datasets/{name}/train/manifest.parquet", rows)


def tiny_fields(**overrides) -> dict:
    """Config fields for a seconds-long CPU run of deeplabv2_tiny on 64x32 images."""
    fields = dict(model="deeplabv2_tiny", crop=[32, 64], source_resize=[32, 64], select_resize=[32, 64],
                  batch_size=2, num_workers=0, lr=0.01, checkpoint_every=2, eval_every=2, log_every=1)
    fields.update(overrides)
    return fields
