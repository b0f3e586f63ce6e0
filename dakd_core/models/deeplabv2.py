"""DeepLabV2 with two ASPP classifiers (AdaptSegNet's multi-level segmenter).

The backbone is dilated to output stride 8. The auxiliary classifier reads a middle stage
(layer3 for ResNets), the main classifier the last stage; both give logits at stride 8.
"""

from __future__ import annotations

import torch
from torch import nn

from dakd_core.models.base import SegmentationModel, SegOutput, create_backbone
from dakd_core.models.registry import register_model

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
    """DeepLabV2 classifier: parallel 3x3 convs with dilations 6/12/18/24, outputs SUMMED.

    logits = sum_d conv3x3_dilation_d(x). (AdaptSegNet's public Classifier_Module returns inside
    its loop after adding the second branch, so branches 3 and 4 never contribute; here all four
    do.)
    """

    def __init__(self, in_channels: int, num_classes: int, dilations=ASPP_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.branches:
            # DeepLab's initialisation of the classifier: small weights, zero bias.
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(SegmentationModel):
    """timm backbone (output stride 8) + aux ASPP on a middle stage + main ASPP on the last stage.

    forward_features returns {"mid": middle-stage map, "last": last-stage map}, both at stride 8.
    """

    def __init__(
        self,
        name: str,
        arch: str,
        num_classes: int,
        stage_indices: tuple[int, int] = (3, 4),
        backbone_weights=None,
        **timm_kwargs,
    ):
        super().__init__(name, num_classes)
        self.backbone = create_backbone(arch, stage_indices, 8, backbone_weights, **timm_kwargs)
        mid_ch, last_ch = self.backbone.feature_info.channels()
        self.aux_head = ASPPClassifier(mid_ch, num_classes)
        self.main_head = ASPPClassifier(last_ch, num_classes)
        self.output_strides = {"main": 8, "aux": 8}
        self.feature_channels = {"mid": mid_ch, "last": last_ch}

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mid, last = self.backbone(x)
        return {"mid": mid, "last": last}

    def forward_head(self, feats: dict[str, torch.Tensor]) -> SegOutput:
        return SegOutput(main=self.main_head(feats["last"]), aux=self.aux_head(feats["mid"]))


# name -> (timm architecture, timm kwargs overriding it, role). Widths of the two small ones
# are chosen for CPU runs: see docs/models.md for their parameter counts and step times.
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "deeplabv2_resnet101": ("resnet101", {}, "teacher (AdaptSegNet / DAKD)"),
    "deeplabv2_resnet50": ("resnet50", {}, "teacher"),
    "deeplabv2_resnet34": ("resnet34", {}, "student"),
    "deeplabv2_resnet18": ("resnet18", {}, "student; teacher of the CPU demo"),
    # aux on the 112-channel stage, main on the 960-channel one
    "deeplabv2_mobilenetv3": ("mobilenetv3_large_100", {}, "student"),
    # one BasicBlock per stage at half the ResNet18 width: the CPU demo's student
    "deeplabv2_thin": ("resnet18", {"layers": (1, 1, 1, 1), "channels": (32, 64, 128, 256)}, "CPU-demo student"),
    # one BasicBlock per stage, widths 16..128, 3-conv stem of width 16: tests and smoke runs
    "deeplabv2_tiny": (
        "resnet18",
        {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_type": "deep", "stem_width": 16},
        "tests / smoke runs",
    ),
}


def _register(name: str, arch: str, timm_kwargs: dict) -> None:
    @register_model(name)
    def build(num_classes: int = 19, backbone_weights=None) -> DeepLabV2:
        return DeepLabV2(name, arch, num_classes, backbone_weights=backbone_weights, **timm_kwargs)


for _name, (_arch, _kwargs, _role) in VARIANTS.items():
    _register(_name, _arch, _kwargs)
