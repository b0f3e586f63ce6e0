"""Tiny labelled/unlabelled datasets and checkpoints for the cache and distillation tests."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from dakd_core.data.imageio import encode_png
from dakd_core.data.manifest import write_manifest
from dakd_core.models import create_model
from dakd_core.models.checkpoint import make_payload, save_checkpoint
from dakd_core.storage import open_store

H, W = 32, 64  # 64x32 images: the discriminator needs >= 32 pixels per side


def make_split(store_uri: str, name: str, domain: str, n: int, seed: int, labelled: bool = True,
               size: tuple[int, int] = (H, W)) -> str:
    """n images of `size` (H, W) with a few coloured classes (labels follow the colours); returns
    the manifest URI."""
    h, w = size
    store = open_store(store_uri)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = np.zeros((h, w), np.uint8)
        label[: h // 3] = 10  # sky
        label[h // 3 : 2 * h // 3, rng.integers(0, w // 2) :] = 2  # building
        label[2 * h // 3 :] = 0  # road
        palette = {0: (128, 64, 128), 2: (70, 70, 70), 10: (70, 130, 180)}
        image = np.zeros((h, w, 3), np.uint8)
        for cls, colour in palette.items():
            image[label == cls] = colour
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        image_bytes = encode_png(image)
        sid = f"{name}_{i:03d}"
        image_uri = store.put_bytes(f"datasets/{name}/images/{sid}.png", image_bytes)
        label_uri = store.put_bytes(f"datasets/{name}/labels/{sid}.png", encode_png(label)) if labelled else None
        rows.append({
            "sample_id": sid, "split": "train", "domain": domain, "condition": None,
            "image_uri": image_uri, "label_uri": label_uri, "height": h, "width": w,
            "sha256": hashlib.sha256(image_bytes).hexdigest(),
            "class_pixels": [int((label == c).sum()) for c in range(19)],
        })
    return write_manifest(store, f"datasets/{name}/train/manifest.parquet", rows)


def make_checkpoint(uri: str, seed: int, model: str = "deeplabv2_tiny", **extra) -> str:
    torch.manual_seed(seed)
    net = create_model(model, num_classes=19)
    # Give BatchNorm non-trivial running statistics, so "unchanged" is a meaningful check.
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, H, W))
    return save_checkpoint(uri, make_payload(net, 0, **extra))
