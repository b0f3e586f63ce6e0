"""SwiftNet-FPN networks: the thesis' real-time students (seed 004) and the CPU-scale pair.

Backbone at its natural output stride 32, stages at strides 4/8/16/32 (and the stem's stride-2
map for the CPU-scale networks). Decoder, single scale: spatial pyramid pooling (global +
windowed averages) on the stride-32 map, then top-down: upsample x2 (to the lateral's size), add a
1x1 lateral projection of the backbone stage, blend with a 3x3 conv, down to the finest stage.
Outputs: main logits at the finest decoder stride (4 for the real-time students, 2 for
`swiftnet_thin` / `swiftnet_tiny`), aux logits at STRIDE 8 (from the stride-8 decoder map, the
resolution of the DeepLabV2 teachers' maps). The losses resize as needed, so the DAKD losses apply
unchanged.

Why stride 2 for the CPU-scale networks: at the 128x64 inputs a CPU can train on, stride-8 logits
are 16x8 and cap target mIoU near 50 % (poles, lights and signs vanish); stride 2 raises that
ceiling above 85 % for a few percent more compute (the finest blend runs on a 64x32 map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dakd_core.models.base import SegmentationModel, SegOutput, create_backbone
from dakd_core.models.registry import register_model

DECODER_CHANNELS = 128
SPP_WINDOWS = (3, 7)


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class SpatialPyramidPooling(nn.Module):
    """Context pyramid on the stride-32 map: 1x1 bottleneck, then pooled levels concatenated with it
    and fused by a 1x1 conv. Levels: the global average (grid 1) and stride-1 average pools over
    3x3 and 7x7 windows (about 96 and 224 input pixels). SwiftNet pools to grids 2/4/8 with
    adaptive pooling instead; ONNX cannot export that for dynamic input sizes, and `forward` must
    export. Pooled branches have no BatchNorm: a global average of a batch of one has a single
    value per channel."""

    def __init__(self, in_channels: int, out_channels: int, windows=SPP_WINDOWS):
        super().__init__()
        self.windows = tuple(windows)
        levels = 1 + len(self.windows)
        level_channels = out_channels // levels
        self.bottleneck = conv_bn_relu(in_channels, out_channels, 1)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, level_channels, 1), nn.ReLU(inplace=True)) for _ in range(levels)
        )
        self.fuse = conv_bn_relu(out_channels + level_channels * levels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(x)
        pooled = [x.mean(dim=(2, 3), keepdim=True)]
        pooled += [F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False) for k in self.windows]
        parts = [x] + [_upsample_to(level(p), x) for level, p in zip(self.levels, pooled)]
        return self.fuse(torch.cat(parts, dim=1))


class SwiftNet(SegmentationModel):
    """forward_features returns {"mid": stride-16 backbone map, "last": stride-32 backbone map,
    "spp": pooled stride-32 map, "decoder8": stride-8 decoder map, "decoder": the finest decoder
    map (stride `finest_stride`)}.

    `finest_stride` 4 (SwiftNet) or 2 (one more ladder step, onto the stem's stride-2 map).
    """

    def __init__(self, name: str, arch: str, num_classes: int, backbone_weights=None, width=DECODER_CHANNELS,
                 finest_stride: int = 4, **timm_kwargs):
        super().__init__(name, num_classes)
        if finest_stride not in (2, 4):
            raise ValueError(f"finest_stride must be 2 or 4, got {finest_stride}")
        stages = (0, 1, 2, 3, 4) if finest_stride == 2 else (1, 2, 3, 4)
        self.backbone = create_backbone(arch, stages, 32, backbone_weights, **timm_kwargs)
        *skip_channels, c32 = self.backbone.feature_info.channels()
        self.spp = SpatialPyramidPooling(c32, width)
        # laterals / blends ordered from stride 16 down to the finest stride
        self.laterals = nn.ModuleList(conv_bn_relu(c, width, 1) for c in reversed(skip_channels))
        self.blends = nn.ModuleList(conv_bn_relu(width, width, 3) for _ in skip_channels)
        self.main_head = nn.Conv2d(width, num_classes, 1)
        self.aux_head = nn.Conv2d(width, num_classes, 1)
        self.output_strides = {"main": finest_stride, "aux": 8}
        self.feature_channels = {"mid": skip_channels[-1], "last": c32, "spp": width, "decoder8": width,
                                 "decoder": width}
        self.dense_feature = "decoder8"

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        *skips, f32 = self.backbone(x)
        pooled = self.spp(f32)
        top, maps = pooled, []
        for skip, lateral, blend in zip(reversed(skips), self.laterals, self.blends):
            top = blend(_upsample_to(top, skip) + lateral(skip))
            maps.append(top)
        # maps run stride 16, 8, [4, [2]]: decoder8 is the second, the finest the last
        return {"mid": skips[-1], "last": f32, "spp": pooled, "decoder8": maps[1], "decoder": maps[-1]}

    def forward_head(self, feats: dict[str, torch.Tensor]) -> SegOutput:
        return SegOutput(main=self.main_head(feats["decoder"]), aux=self.aux_head(feats["decoder8"]))


@register_model("swiftnet_resnet18")
def swiftnet_resnet18(num_classes=19, backbone_weights=None):
    return SwiftNet("swiftnet_resnet18", "resnet18", num_classes, backbone_weights)


@register_model("swiftnet_mobilenetv4")
def swiftnet_mobilenetv4(num_classes=19, backbone_weights=None):
    """MobileNetV4-Conv-Small backbone (timm `mobilenetv4_conv_small`)."""
    return SwiftNet("swiftnet_mobilenetv4", "mobilenetv4_conv_small", num_classes, backbone_weights)


# The CPU-scale pair: one BasicBlock per ResNet stage with a 3-conv stem, the decoder down to
# stride 2. The teacher has 4.1x the student's parameters (widths x2, decoder 72 vs 32). Their training
# recipe (AdamW, cosine) is in dakd_core/train/recipes.py.
@register_model("swiftnet_thin")
def swiftnet_thin(num_classes=19, backbone_weights=None):
    """CPU-scale teacher: ResNet widths 32..256, decoder width 72, logits at stride 2."""
    return SwiftNet("swiftnet_thin", "resnet18", num_classes, backbone_weights, width=72, finest_stride=2,
                    layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_type="deep", stem_width=32)


@register_model("swiftnet_tiny")
def swiftnet_tiny(num_classes=19, backbone_weights=None):
    """CPU-scale student: ResNet widths 16..128, decoder width 32, logits at stride 2."""
    return SwiftNet("swiftnet_tiny", "resnet18", num_classes, backbone_weights, width=32, finest_stride=2,
                    layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep", stem_width=16)
