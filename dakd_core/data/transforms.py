"""THE image normalisation and the train-time geometric augmentation.

Every path that feeds pixels to a network (training, teacher caching, evaluation, export parity)
normalises with `normalize` from this module and nothing else: the public DAKD code mixes two
normalisations (Caffe BGR mean-only and ImageNet RGB mean/std), which silently costs mIoU when a
teacher trained with one is queried with the other. Here there is exactly one: RGB, ImageNet
mean/std, on the 0..255 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dakd_core.errors import DataError

# RGB order, 0..255 scale (the usual 0..1 ImageNet statistics times 255).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

IGNORE_LABEL = 255  # same value as dakd_core.labels.IGNORE_INDEX; padding of label crops


def normalize(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Normalise an RGB image for a network.

    - `uint8` numpy array HxWx3 (what `decode_image` returns) -> float32 tensor 3xHxW;
    - float tensor Nx3xHxW or 3xHxW with values on the 0..255 scale -> same shape, same device
      (used by export/eval code that batches raw pixels on the accelerator).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(
                f"normalize expects a uint8 HxWx3 RGB array, got {image.dtype} {image.shape}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    elif isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise DataError(
                f"normalize expects a float tensor (N)x3xHxW on 0..255, got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        tensor = image
    else:
        raise DataError(f"normalize expects a numpy array or a tensor, got {type(image).__name__}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    return (tensor - mean) / std


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to `size` = (height, width): image bilinear, label nearest (ids must not blend)."""
    if size is None or image.shape[:2] == tuple(size):
        return image, label
    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


@dataclass(frozen=True)
class CropPlan:
    """One sampled geometry, in the coordinates of the image it was sampled for.

    Applying the same plan to a map of another resolution (e.g. a stride-8 teacher probability
    map) samples it exactly where the augmented image's pixels come from (`_warp_lowres`): no
    offset is rounded to the map's grid, so a cached teacher map stays aligned with the crop.
    """

    height: int  # size of the image the plan was drawn for
    width: int
    scale: float
    top: int  # crop offset in the scaled image (may be negative: padding)
    left: int
    crop_h: int
    crop_w: int
    flip: bool

    def apply(self, array: np.ndarray, nearest: bool, pad_value) -> np.ndarray:
        """Scale, crop (padding with `pad_value`, a scalar or a per-channel value) and flip.

        An array of the plan's own size (image, labels) is resized and cropped at integer offsets;
        one of another size (a teacher map at output stride) goes through `_warp_lowres`."""
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        if self.identity:
            out = array  # training at the stored size, no rescaling: every map is its own crop
        elif array.shape[:2] != (self.height, self.width):
            out = self._warp_lowres(array, interp, pad_value)
        else:
            sh, sw = self.scaled_size
            # cv2 cannot resize more than 512 channels; teacher maps have 19, images 3.
            scaled = cv2.resize(array, (sw, sh), interpolation=interp)
            if scaled.ndim < array.ndim:  # cv2 drops a trailing channel axis of size 1
                scaled = scaled[..., None]
            ch, cw, top, left = self.crop_h, self.crop_w, self.top, self.left
            out = np.full((ch, cw) + array.shape[2:], pad_value, dtype=array.dtype)
            # Intersection of the crop window with the scaled image.
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + ch, sh), min(left + cw, sw)
            if y1 > y0 and x1 > x0:
                out[y0 - top : y1 - top, x0 - left : x1 - left] = scaled[y0:y1, x0:x1]
        if self.flip:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    @property
    def identity(self) -> bool:
        """Scale 1 and a crop that is the whole image: resampling would return each map unchanged
        (for a map at output stride too: `_warp_lowres`'s affine is then the identity)."""
        return self.scale == 1.0 and (self.top, self.left, self.crop_h, self.crop_w) == (0, 0, self.height, self.width)

    @property
    def scaled_size(self) -> tuple[int, int]:
        """(H, W) of the scaled image the crop is cut from (as `RandomScaleCropFlip.sample` drew it)."""
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))

    def _warp_lowres(self, array: np.ndarray, interp: int, pad_value) -> np.ndarray:
        """The crop of a map of size (h, w) != the image's (H, W), at the crop's size times h/H.

        With the half-pixel convention of cv2.resize / F.interpolate(align_corners=False), output
        pixel i of a map of n pixels over the crop's `crop_h` sits at crop row (i + .5) crop_h/n - .5,
        i.e. scaled-image row y_s = that + top, original row (y_s + .5) H/sh - .5 and map row
        u = (y_s + .5) h/sh - .5. That affine u(i) (and v(j)) is sampled in one warp, so the map is
        aligned to the crop to the sub-pixel (rounding the offsets to the map's grid, as before,
        shifted it by up to half a map pixel: +-4 image pixels at stride 8). Pixels whose source
        row/column lies outside the scaled image are `pad_value`."""
        h, w = array.shape[:2]
        sh, sw = self.scaled_size
        out_h, out_w = max(1, round(self.crop_h * h / self.height)), max(1, round(self.crop_w * w / self.width))
        ay, ax = self.crop_h / out_h, self.crop_w / out_w  # crop pixels per output pixel
        matrix = np.array([[ax * w / sw, 0.0, (0.5 * ax + self.left) * w / sw - 0.5],
                           [0.0, ay * h / sh, (0.5 * ay + self.top) * h / sh - 0.5]])
        # Replicate, not a constant, at the border: pixels inside the image next to its edge must
        # not blend with the pad value; pixels outside it are overwritten below.
        out = cv2.warpAffine(array, matrix, (out_w, out_h), flags=interp | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        if out.ndim < array.ndim:
            out = out[..., None]
        rows = (np.arange(out_h) + 0.5) * ay - 0.5 + self.top  # scaled-image row of each output row
        cols = (np.arange(out_w) + 0.5) * ax - 0.5 + self.left
        outside_r = (rows < -0.5) | (rows >= sh - 0.5)
        outside_c = (cols < -0.5) | (cols >= sw - 0.5)
        out[outside_r] = pad_value
        out[:, outside_c] = pad_value
        return out


class RandomScaleCropFlip:
    """Random scale in `scale_range`, random crop of `crop` = (height, width), random h-flip.

    Randomness comes only from the `rng` passed in, so a sample's augmentation is a pure function
    of (seed, epoch, index): the same in every DataLoader worker layout and after a resume.
    Crops larger than the scaled image are padded: image with the mean colour (0 after
    normalisation), labels with 255 (ignored), extra maps with 0.
    """

    def __init__(
        self,
        crop: tuple[int, int],
        scale_range: tuple[float, float] = (0.75, 1.25),
        flip: bool = True,
    ):
        if crop[0] <= 0 or crop[1] <= 0:
            raise DataError(f"crop must be positive (height, width), got {crop}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise DataError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip

    def sample(self, height: int, width: int, rng: np.random.Generator) -> CropPlan:
        scale = float(rng.uniform(*self.scale_range))
        sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
        ch, cw = self.crop
        # Where the scaled image is smaller than the crop, centre it (negative offset = padding).
        top = int(rng.integers(0, sh - ch + 1)) if sh >= ch else -((ch - sh) // 2)
        left = int(rng.integers(0, sw - cw + 1)) if sw >= cw else -((cw - sw) // 2)
        flip = bool(self.flip and rng.random() < 0.5)
        return CropPlan(height, width, scale, top, left, ch, cw, flip)

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray | None,
        rng: np.random.Generator,
        extra: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """Returns (image, label, extra) with one shared geometry; labels use nearest."""
        plan = self.sample(image.shape[0], image.shape[1], rng)
        mean_colour = np.array(IMAGENET_MEAN, dtype=np.float64).round().astype(image.dtype)
        out_image = plan.apply(image, nearest=False, pad_value=mean_colour)
        out_label = None if label is None else plan.apply(label, nearest=True, pad_value=IGNORE_LABEL)
        out_extra = {k: plan.apply(v, nearest=False, pad_value=0) for k, v in (extra or {}).items()}
        return out_image, out_label, out_extra



def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random per-channel gain (0.7-1.3), contrast (0.6-1.4) and brightness (+-50) of a uint8 RGB
    image. Strong on purpose: it is the practitioner's baseline against an appearance shift."""
    x = image.astype(np.float32)
    mean = x.mean()
    gain = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    contrast = np.float32(rng.uniform(0.6, 1.4))
    bias = rng.uniform(-50, 50, 3).astype(np.float32)
    out = (x - mean) * contrast * gain + mean + bias
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
