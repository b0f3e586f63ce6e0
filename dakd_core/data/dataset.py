"""Training/selection samples read from an ingest manifest and the object store.

A sample's augmentation is drawn from `np.random.default_rng((seed, epoch, index))`: it depends on
nothing else (not on the DataLoader worker that loads it, not on what ran before), which is what
makes a resumed run replay the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from dakd_core.data.manifest import read_manifest, read_row_image, read_row_label
from dakd_core.data.memo import DecodedMemo
from dakd_core.data.transforms import RandomScaleCropFlip, normalize, photometric_jitter, resize_pair
from dakd_core.errors import DataError


class ManifestDataset(Dataset):
    """Items `{"image": float 3xHxW normalised, "label": long HxW (255 = ignore) if with_labels,
    "index": int, "sample_id": str}`.

    Every image is first resized to `resize` = (height, width) (the configured training
    resolution; None keeps the stored size). With `train=True` it is then randomly scaled,
    cropped to `crop` = (height, width) and flipped (`scale_range`, `flip`); with `train=False`
    nothing random happens. `photometric` (train only) adds `photometric_jitter` to the image.
    `memo_mib` MiB of decoded, resized samples stay in memory (`DecodedMemo`; 0: none).
    """

    def __init__(
        self,
        manifest_uri: str,
        crop: tuple[int, int] | None = None,
        train: bool = True,
        with_labels: bool = True,
        seed: int = 0,
        resize: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.75, 1.25),
        flip: bool = True,
        photometric: bool = False,
        memo_mib: int = 0,
    ):
        self.manifest_uri = manifest_uri
        self.memo = DecodedMemo(memo_mib)
        self.photometric = photometric and train
        self.rows = read_manifest(manifest_uri)
        self.train = train
        self.with_labels = with_labels
        self.seed = int(seed)
        self.resize = tuple(resize) if resize is not None else None
        self.epoch = 0
        if with_labels:
            unlabelled = [r["sample_id"] for r in self.rows if not r.get("label_uri")]
            if unlabelled:
                raise DataError(
                    f"manifest {manifest_uri} has {len(unlabelled)} samples without label_uri "
                    f"(e.g. '{unlabelled[0]}') but labels are required here"
                )
        self.augment = (
            RandomScaleCropFlip(crop, scale_range, flip) if train and crop is not None else None
        )

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Draw a fresh augmentation per epoch (called before each epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The decoded, resized (not augmented, not normalised) uint8 image and label (read-only
        arrays when the memo keeps them)."""
        return self.memo.get(index, lambda: self._decode(index))

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        row = self.rows[index]
        # Checked against the manifest's object sha256 and height/width (so label == image size).
        image = read_row_image(row, self.manifest_uri)
        label = read_row_label(row, self.manifest_uri) if self.with_labels else None
        return resize_pair(image, label, self.resize)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """`key` is an index (augmented with the epoch of `set_epoch`) or an (epoch, index) pair,
        as the training engine's endless sampler yields them."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, label = self.load(index)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, int(epoch), int(index)))
            image, label, _ = self.augment(image, label, rng)
            if self.photometric:
                image = photometric_jitter(image, rng)
        item = {"image": normalize(image), "index": int(index), "sample_id": self.rows[index]["sample_id"]}
        if label is not None:
            item["label"] = torch.from_numpy(label.astype(np.int64))
        return item
