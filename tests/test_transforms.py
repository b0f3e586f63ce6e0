"""One normalisation for every path, and augmentation geometry shared by image, label and maps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import dakd_core
from dakd_core.data import transforms
from dakd_core.data.dataset import ManifestDataset
from dakd_core.data.imageio import decode_image
from dakd_core.data.manifest import read_manifest
from dakd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomScaleCropFlip, normalize
from dakd_core.errors import DataError
from dakd_core.storage import read_bytes

from _train_data import make_split


def test_normalize_values_and_both_input_kinds_agree():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = (255, 0, 128)
    out = normalize(image)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    assert out[:, 0, 0].tolist() == pytest.approx(
        [(255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1], (128 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    )
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    assert torch.equal(normalize(batch)[0], out)
    with pytest.raises(DataError, match="uint8 HxWx3"):
        normalize(image[:, :, :2])
    with pytest.raises(DataError, match="float tensor"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_dataset_eval_and_export_share_the_one_normalisation(file_store):
    uri = make_split(file_store, "norm", 2, "source", seed=0)
    row = read_manifest(uri)[1]
    decoded = decode_image(read_bytes(row["image_uri"]), row["image_uri"])
    item = ManifestDataset(uri, train=False, with_labels=True)[1]
    assert torch.equal(item["image"], normalize(decoded))

    # The deployable module (evaluation + export) normalises raw 0..255 pixels with the same
    # function: capture what its network receives.
    from dakd_core.evaluation.inference import DeployedSegmenter
    from dakd_core.models import SegOutput

    seen = {}

    class Capture(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return SegOutput(main=x[:, :1], aux=x[:, :1])

    DeployedSegmenter(Capture())(torch.from_numpy(decoded).permute(2, 0, 1)[None].float())
    assert torch.allclose(seen["x"][0], item["image"], atol=1e-6)


def test_no_second_normalisation_in_the_code_base():
    """ImageNet (0..1 or 0..255) or Caffe BGR mean constants may live only in transforms.py."""
    constants = re.compile(r"0\.485|0\.229|123\.675|58\.395|104\.008|122\.675|116\.669")
    root = Path(dakd_core.__file__).parent
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if p != Path(transforms.__file__) and constants.search(p.read_text())
    ]
    assert offenders == []


def _coded(label: np.ndarray) -> np.ndarray:
    return np.repeat((label.astype(np.uint8) * 20)[..., None], 3, axis=2)


def test_same_geometry_for_image_label_and_low_resolution_map():
    rng = np.random.default_rng(0)
    label = np.zeros((256, 512), np.uint8)
    label[:, 300:] = 1
    label[160:, :] = 2
    aug = RandomScaleCropFlip(crop=(192, 384), scale_range=(0.8, 1.4), flip=True)
    stride8 = label[::8, ::8].astype(np.float32)[..., None]  # e.g. a teacher map at stride 8
    for seed in range(6):
        image, out_label, extra = aug(_coded(label), label, np.random.default_rng(seed), {"t": stride8})
        assert image.shape == (192, 384, 3) and out_label.shape == (192, 384) and extra["t"].shape == (24, 48, 1)
        assert set(np.unique(out_label)) <= {0, 1, 2, 255}  # nearest: no blended ids
        valid = out_label != 255
        # image pixels (bilinear) agree with the label (nearest) away from the region borders
        agree = np.abs(image[..., 0].astype(int) - out_label.astype(int) * 20) < 5
        assert agree[valid].mean() > 0.9
        # the stride-8 map lands on the same place as the full-resolution label
        coarse = out_label[4::8, 4::8].astype(np.float32)
        mask = coarse != 255
        assert (np.abs(extra["t"][..., 0] - coarse)[mask] < 0.5).mean() > 0.9
    flips = {aug.sample(64, 128, np.random.default_rng(s)).flip for s in range(20)}
    assert flips == {True, False}


def test_an_identity_plan_returns_every_map_as_it_is_flipped_or_not():
    # Training at the stored size without rescaling: crop = image, so nothing is resampled.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (64, 128), dtype=np.uint8)
    stride8 = rng.random((8, 16, 19)).astype(np.float32)
    for flip in (False, True):
        plan = transforms.CropPlan(64, 128, 1.0, 0, 0, 64, 128, flip)
        assert plan.identity
        expect = (lambda a: a[:, ::-1]) if flip else (lambda a: a)
        assert np.array_equal(plan.apply(image, nearest=False, pad_value=0), expect(image))
        assert np.array_equal(plan.apply(label, nearest=True, pad_value=255), expect(label))
        assert np.array_equal(plan.apply(stride8, nearest=False, pad_value=0), expect(stride8))
    # the resampling it skips would return the same values
    np.testing.assert_allclose(plan._warp_lowres(stride8, transforms.cv2.INTER_LINEAR, 0), stride8, atol=1e-6)
    assert not transforms.CropPlan(64, 128, 1.0, 0, 1, 64, 127, False).identity
    assert not transforms.CropPlan(64, 128, 1.1, 0, 0, 64, 128, False).identity


def test_crop_larger_than_image_pads_mean_and_ignore():
    label = np.ones((10, 20), np.uint8)
    aug = RandomScaleCropFlip(crop=(32, 64), scale_range=(1.0, 1.0), flip=False)
    image, out_label, _ = aug(np.full((10, 20, 3), 200, np.uint8), label, np.random.default_rng(0))
    assert (out_label == 255).sum() == 32 * 64 - 10 * 20 and (out_label == 1).sum() == 10 * 20
    padded = normalize(image)[:, out_label == 255]
    assert padded.abs().max() < 0.01  # mean colour -> ~0 after normalisation


def test_augmentation_is_a_function_of_seed_epoch_index(file_store):
    uri = make_split(file_store, "aug", 3, "source", seed=1)
    ds = ManifestDataset(uri, crop=(24, 48), train=True, with_labels=True, seed=5, scale_range=(0.5, 1.5))
    a, b = ds[(0, 2)], ds[(0, 2)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].shape == (3, 24, 48) and a["label"].dtype == torch.int64
    assert not torch.equal(ds[(1, 2)]["image"], a["image"])
    unlabelled = make_split(file_store, "unl", 2, "target", seed=2, labelled=False)
    with pytest.raises(DataError, match="without label_uri"):
        ManifestDataset(unlabelled, with_labels=True)
    assert "label" not in ManifestDataset(unlabelled, with_labels=False, train=False)[0]
