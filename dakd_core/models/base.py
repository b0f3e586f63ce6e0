"""What every segmentation network shares: the output type, the base class and the timm backbone.

A network is a timm backbone (`features_only=True`, random init or `backbone_weights`) plus heads. The
forward pass is split in two so feature distillation can read the intermediate maps without a
second forward and without changing `forward` (which ONNX export traces):

    feats = model.forward_features(x)     # dict of named feature maps
    out = model.forward_head(feats)       # SegOutput(main, aux)
    model(x) == model.forward_head(model.forward_features(x))
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import dakd_core.compat  # noqa: F401  (must precede timm: defines torchvision ops if missing)
import timm
import torch
from torch import nn

from dakd_core.errors import ConfigError

# AdaptSegNet trains the freshly initialised classifier heads 10x faster than the backbone.
HEAD_LR_MULT = 10.0


class SegOutput(NamedTuple):
    """Logits of the main (last stage) and auxiliary (middle stage) classifiers, (N, C, h, w)."""

    main: torch.Tensor
    aux: torch.Tensor


class SegmentationModel(nn.Module):
    """Base class: a `backbone` module plus head modules; subclasses define the two halves.

    Attributes set by subclasses:
      name            registry name (stored in checkpoints)
      num_classes     number of output channels of both classifiers
      output_strides  {"main": s, "aux": s}: input size / logit size of each output
      feature_channels {feature name: channels} for every map `forward_features` returns
      dense_feature   the feature map at stride 8 whose content the classifiers read (DeepLab: the
                      last backbone stage; SwiftNet: the stride-8 decoder map). Feature-level
                      adaptation (ROAD) works on it: the stride-32 "last" map of a SwiftNet is 2x4
                      at 64x128.
    """

    backbone: nn.Module
    aux_head: nn.Module  # the classifier of SegOutput.aux (SFDA trains without it)

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 for model '{name}', got {num_classes}")
        self.name = name
        self.num_classes = num_classes
        self.output_strides: dict[str, int] = {}
        self.feature_channels: dict[str, int] = {}
        self.dense_feature = "last"

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_head(self, feats: dict[str, torch.Tensor]) -> SegOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> SegOutput:
        return self.forward_head(self.forward_features(x))

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: backbone at `lr`, everything else (heads, decoder) at 10x `lr`.

        Each group carries `lr_mult` so a schedule can set `group["lr"] = base_lr * lr_mult * f`.
        """
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for p in self.parameters() if id(p) not in backbone_ids and p.requires_grad]
        return [
            {"params": backbone, "lr": lr, "lr_mult": 1.0, "name": "backbone"},
            {"params": heads, "lr": lr * HEAD_LR_MULT, "lr_mult": HEAD_LR_MULT, "name": "head"},
        ]


def create_backbone(
    arch: str,
    out_indices: tuple[int, ...],
    output_stride: int,
    weights: str | Path | None = None,
    **timm_kwargs,
) -> nn.Module:
    """A timm feature extractor returning the maps at `out_indices` (random init unless `weights`).

    `weights` optionally names the backbone's state dict: a file, a store URI or `timm:TAG` (see
    dakd_core/models/weights.py); a timm classification checkpoint of the same architecture is
    accepted: its classifier keys are dropped.
    """
    backbone = timm.create_model(
        arch,
        pretrained=False,
        features_only=True,
        out_indices=out_indices,
        output_stride=output_stride,
        **timm_kwargs,
    )
    if weights is not None:
        load_backbone_weights(backbone, arch, weights, **timm_kwargs)
    return backbone


def load_backbone_weights(backbone: nn.Module, arch: str, path: str | Path, **timm_kwargs) -> None:
    """Strictly load a state dict (a path, a store URI or `timm:TAG`, see weights.py) into
    `backbone`; any mismatch is a ConfigError naming `path`."""
    from dakd_core.models.weights import read_state_dict

    state = read_state_dict(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"backbone_weights: {path} does not hold a state dict of tensors")

    expected = set(backbone.state_dict())
    # Keys the full timm classifier has beyond the feature extractor (fc, conv_head, ...). Built
    # on the meta device: no memory, no init cost.
    with torch.device("meta"):
        full = timm.create_model(arch, pretrained=False, **timm_kwargs)
    classifier_only = set(full.state_dict()) - expected
    state = {k: v for k, v in state.items() if k not in classifier_only}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(
            f"backbone_weights: {path} does not match backbone '{arch}': "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    own = backbone.state_dict()
    wrong_shape = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise ConfigError(
            f"backbone_weights: {path} has {len(wrong_shape)} tensors of the wrong shape for "
            f"'{arch}', e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    backbone.load_state_dict(state, strict=True)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
