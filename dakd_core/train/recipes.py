"""Per-network default training recipes: the TrainConfig fields a network trains best with.

A config that does not set one of these fields gets the network's value; one it sets wins. Networks
not listed train with TrainConfig's defaults: the paper's recipe (SGD lr 2.5e-4, momentum 0.9,
weight decay 5e-4, poly 0.9, heads at 10x, random scale 0.75-1.25 + flip), built for
ImageNet-initialised DeepLab-R101 at 1024x512.

The CPU-scale networks are randomly initialised (no model hub offline) and small. With the paper's
SGD recipe `deeplabv2_tiny` reached 25.5 % source mIoU in 800 iterations (issue "It learns"). For
`swiftnet_tiny`, 800 iterations of AdamW + cosine + flips at 128x64, batch 8, gave 40.3 / 51.3 /
56.7 % source-val mIoU at lr 2e-3 / 5e-3 / 1e-2 (`python benchmarks/bare_loop.py --model
swiftnet_tiny --iters 800 --lr LR`, seed 0). A plain module (no torch import) so that building a
config stays cheap.
"""

from __future__ import annotations

CPU_SCALE = {
    "optimizer": "adamw",
    "lr": 1e-2,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "warmup_iterations": 20,
    "scale_range": (1.0, 1.0),  # flip only: random rescaling costs more than it gives at 128x64
}

NETWORK_RECIPES: dict[str, dict] = {
    "swiftnet_thin": CPU_SCALE,
    "swiftnet_tiny": CPU_SCALE,
}


def recipe_for(model: str) -> dict:
    """The default training fields of `model` ({} for the paper networks and unknown names)."""
    return dict(NETWORK_RECIPES.get(model, {}))
