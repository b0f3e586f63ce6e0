"""All training losses; each function's docstring gives its formula."""

from dakd_core.losses.adversarial import SOURCE_LABEL, TARGET_LABEL, bce_adversarial
from dakd_core.losses.distill import border_weighted_kl, kl_distill, mse_distill, pseudo_label_ce, pseudo_labels
from dakd_core.losses.feature import FeatureAdapter, cwd_loss, l2_feature, lad_loss
from dakd_core.losses.segmentation import border_focal_loss, border_weights, segmentation_loss, segmentation_losses

__all__ = [
    "FeatureAdapter",
    "cwd_loss",
    "l2_feature",
    "lad_loss",
    "SOURCE_LABEL",
    "TARGET_LABEL",
    "bce_adversarial",
    "border_focal_loss",
    "border_weighted_kl",
    "border_weights",
    "kl_distill",
    "mse_distill",
    "pseudo_label_ce",
    "pseudo_labels",
    "segmentation_loss",
    "segmentation_losses",
]
