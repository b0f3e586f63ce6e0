"""SFDA (seed 002): source-free knowledge transfer and intra-domain patch self-supervision.

- eq. 2  L_TAR = -1/(HW) sum_hw sum_c p^2                      (max squares, mean over images)
- eq. 4  L_BNS = sum_l ||mu_l(x~) - mu_bar_l||^2 + ||var_l(x~) - var_bar_l||^2  over the BatchNorm
         layers of the fixed source model (batch statistics of their inputs vs running stats)
- eq. 5  L_MAE = mean over pixels of 1/C * || p_S(x~) - p_fixed(x~) ||_1        (softmax maps)
- eqs. 8-10 dual attention of a feature map F (N = HW positions x C channels):
         S = softmax_rows(F F^T / sqrt(C)),  R = softmax_rows(F^T F / sqrt(N)),  A = [S F | F R]
         (the 1/sqrt scaling keeps the softmax out of saturation; the paper's formula has none)
- eq. 6  L_DAD^ss = mean |A(F_fixed(x~)) - A(F_S(x~))|
- eq. 7  L_DAD^st = KL(S_fake || S_target) + KL(R_fake || R_target), row-wise, target features
         adaptively pooled to the fake map's size first (the paper's "adaptive pooling")
- eqs. 13-15 IPSM: split each target prediction into K x K patches, mean entropy per patch, rank
         the B images per patch position: the lower-entropy half is "easy", the rest "hard";
         D learns easy -> 0, hard -> 1, the segmenter's L_ADV pushes hard patches towards 0.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from dakd_core.errors import TrainingError
from dakd_core.losses._util import resize_bilinear
from dakd_core.losses.adversarial import bce_adversarial
from dakd_core.losses.road import region_bounds  # the same K x K grid split as ROAD's regions


def max_squares(logits: torch.Tensor) -> torch.Tensor:
    """eq. 2: -mean over images and pixels of sum_c p_c^2."""
    return -(F.softmax(logits.float(), dim=1) ** 2).sum(dim=1).mean()


@contextlib.contextmanager
def bn_statistics(model: nn.Module):
    """Record, for every BatchNorm2d of `model`, its input's batch mean/var during a forward pass.

    Yields a list that fills with (batch_mean, batch_var, running_mean, running_var) per layer;
    pass it to `bns_loss`. Hooks are removed on exit.
    """
    records: list[tuple[torch.Tensor, ...]] = []

    def hook(module, inputs, _output):
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        records.append((mean, var, module.running_mean.float(), module.running_var.float()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def bns_loss(records) -> torch.Tensor:
    """eq. 4 over the recorded layers."""
    if not records:
        raise TrainingError("BNS loss: the source model has no BatchNorm2d layer to match")
    return sum(((m - rm) ** 2).sum() + ((v - rv) ** 2).sum() for m, v, rm, rv in records)


def mae_loss(logits: torch.Tensor, fixed_logits: torch.Tensor) -> torch.Tensor:
    """eq. 5: mean over pixels of the class-averaged absolute difference of the softmax maps."""
    return (F.softmax(logits.float(), dim=1) - F.softmax(fixed_logits.float(), dim=1)).abs().mean()


def attention_maps(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """eqs. 8-10: (A (B, N, 2C), S (B, N, N), R (B, C, C)) of a (B, C, H, W) map."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
    spatial = F.softmax(f @ f.transpose(1, 2) / math.sqrt(c), dim=-1)
    channel = F.softmax(f.transpose(1, 2) @ f / math.sqrt(h * w), dim=-1)
    dual = torch.cat([spatial @ f, f @ channel], dim=-1)
    return dual, spatial, channel


def dad_ss(fixed_features: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """eq. 6: mean absolute difference of the dual attention maps of the same images."""
    return (attention_maps(fixed_features)[0] - attention_maps(features)[0]).abs().mean()


def _row_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """mean over rows of KL(p_row || q_row) for row-stochastic matrices."""
    return (p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12)))).sum(dim=-1).mean()


def dad_st(fake_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """eq. 7: KL between the spatial and the channel attention of fake-source and target maps
    (image n of one batch paired with image n of the other)."""
    target = F.adaptive_avg_pool2d(target_features.float(), fake_features.shape[-2:])
    _, s_fake, r_fake = attention_maps(fake_features)
    _, s_tgt, r_tgt = attention_maps(target)
    return _row_kl(s_fake, s_tgt) + _row_kl(r_fake, r_tgt)


def patch_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """eq. 13: (B, K*K) mean per-pixel entropy of each patch (row-major), from the logits' map."""
    if min(logits.shape[-2:]) < k:
        raise TrainingError(f"IPSM: a {tuple(logits.shape[-2:])} prediction cannot be split into {k}x{k} patches")
    p = F.softmax(logits.float(), dim=1)
    ent = -(p * F.log_softmax(logits.float(), dim=1)).sum(dim=1)  # (B, H, W)
    h, w = ent.shape[-2:]
    return torch.stack([ent[:, r0:r1, c0:c1].mean(dim=(1, 2)) for r0, r1 in region_bounds(h, k) for c0, c1 in region_bounds(w, k)], dim=1)



def rank_easy_hard(entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. 14: per patch position, the batch indices of the B/2 lowest-entropy (easy) and the
    B/2 highest-entropy (hard) patches, each (B/2, K*K). B must be even."""
    b = entropy.shape[0]
    if b < 2 or b % 2:
        raise TrainingError(f"IPSM ranks an even batch of target images, got {b}")
    order = entropy.argsort(dim=0)
    return order[: b // 2], order[b // 2:]


def patches(maps: torch.Tensor, k: int, min_size: int) -> torch.Tensor:
    """(B, K*K, C, h, w): the K x K patches (row-major, adaptive bands) of (B, C, H, W) maps, each
    resized bilinearly to at least `min_size` pixels per side (the discriminator's minimum)."""
    h, w = maps.shape[-2:]
    ph, pw = max(min_size, h // k), max(min_size, w // k)
    out = [resize_bilinear(maps[..., r0:r1, c0:c1], (ph, pw)) for r0, r1 in region_bounds(h, k) for c0, c1 in region_bounds(w, k)]
    return torch.stack(out, dim=1)


def select_patches(patch_maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather (B/2, K*K, C, h, w) patches: element [i, k] = patch_maps[index[i, k], k]."""
    positions = torch.arange(patch_maps.shape[1], device=patch_maps.device)
    return patch_maps[index, positions[None, :]]


def ipsm_adversarial_loss(disc, patch_maps: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """The segmenter's L_ADV: D's BCE on the hard patches against the "easy" label (0, the source
    side of bce_adversarial), so gradients make hard patches look easy."""
    return bce_adversarial(disc(select_patches(patch_maps, hard)), True)


def ipsm_discriminator_loss(disc, patch_maps: torch.Tensor, easy: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """D's loss on detached patches: (BCE(easy -> 0) + BCE(hard -> 1)) / 2, one forward for both."""
    detached = patch_maps.detach()
    d_out = disc(torch.cat([select_patches(detached, easy), select_patches(detached, hard)]))
    half = d_out.shape[0] // 2
    return (bce_adversarial(d_out[:half], True) + bce_adversarial(d_out[half:], False)) / 2


class ConditionalPatchDiscriminator(nn.Module):
    """IPSM's conditional D: a learned embedding of the patch position k (K*K classes) is
    broadcast over the patch and concatenated to its softmax map, then AdaptSegNet's fully
    convolutional discriminator scores it."""

    def __init__(self, num_classes: int, k: int, embed_dim: int = 256, ndf: int = 64):
        super().__init__()
        from dakd_core.models import Discriminator

        self.k = k
        self.embed = nn.Embedding(k * k, embed_dim)
        self.net = Discriminator(num_classes + embed_dim, ndf)

    def forward(self, patch_maps: torch.Tensor) -> torch.Tensor:
        """(B', K*K, C, h, w) patch maps -> (B' * K*K, 1, h', w') logits.

        The same as `self.net` on the concatenation [maps, broadcast code] (C + E channels), computed
        without building it: the first conv is linear in its input channels, so it splits into a
        conv of the C map channels plus a conv of the code channels, and the code part depends only
        on the patch position - K*K maps instead of one per patch. With E = 256 codes against 19
        classes the concatenation made the discriminator most of an SFDA step on CPU.
        """
        b, kk, c, h, w = patch_maps.shape
        self.net.check_size((h, w))
        first, rest = self.net.net[0], self.net.net[1:]
        codes = self.embed(torch.arange(kk, device=patch_maps.device)).to(patch_maps.dtype)  # (K*K, E)
        code_maps = codes[:, :, None, None].expand(-1, -1, h, w).contiguous(memory_format=torch.channels_last)
        conv = dict(stride=first.stride, padding=first.padding)
        by_position = F.conv2d(code_maps, first.weight[:, c:], first.bias, **conv)  # (K*K, ndf, h', w')
        by_patch = F.conv2d(patch_maps.reshape(b * kk, c, h, w), first.weight[:, :c], None, **conv)
        x = (by_patch.unflatten(0, (b, kk)) + by_position).flatten(0, 1)
        return rest(x)
