"""Segmentation networks (registry), discriminators; checkpoints live in `.checkpoint`.

`dakd_core.compat` is imported first: timm imports torchvision, which needs it on CPU images.
"""

import dakd_core.compat  # noqa: F401  (before timm)
from dakd_core.models import deeplabv2, swiftnet  # noqa: F401  (register the networks)
from dakd_core.models.base import SegmentationModel, SegOutput, count_parameters
from dakd_core.models.discriminator import Discriminator, discriminator_input
from dakd_core.models.registry import create_model, list_models, register_model

__all__ = [
    "SegmentationModel",
    "SegOutput",
    "Discriminator",
    "discriminator_input",
    "create_model",
    "list_models",
    "register_model",
    "count_parameters",
]
