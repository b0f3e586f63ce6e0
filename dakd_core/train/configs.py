"""Configs of the training stages (pydantic, strict: unknown keys / bad types / ranges -> ConfigError).

`TrainConfig` holds what every training loop shares (network, source data, schedule, checkpoints,
selection); `PretrainConfig` and `AdaptConfig` add their own fields. The distillation config
subclasses `AdaptConfig` (a distilled student keeps its own adversarial adaptation).

Sizes are (height, width). Defaults are the published AdaptSegNet/ADVENT ones (GTA5 -> Cityscapes):
SGD lr 2.5e-4, momentum 0.9, weight decay 5e-4, poly 0.9, heads at 10x lr; discriminators Adam
1e-4, betas (0.9, 0.99); lambda_adv main 1e-3, aux 2e-4; aux segmentation weight 0.1.

Model selection (`select_manifest`) must be a labelled held-out *tuning* split of the target
domain, never the validation split whose mIoU is reported: choosing the best checkpoint on the
reported split inflates the reported number.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dakd_core.config import StrictConfig

Size = tuple[int, int]

# Fields that change how or where a run executes but not what it computes: a resumed run may
# change them (`out` too: a copied run directory resumes).
EXECUTION_FIELDS = frozenset({"num_workers", "log_every", "device", "out"})


class TrainConfig(StrictConfig):
    # network
    model: str = Field("deeplabv2_resnet101", min_length=1)
    num_classes: int = Field(19, gt=0)
    backbone_weights: str | None = None  # local state dict of the backbone (ImageNet)
    # data
    source_manifest: str = Field(..., min_length=1)  # labelled source domain (training)
    select_manifest: str | None = None  # labelled target *tuning* split for best-checkpoint selection
    source_resize: Size | None = (720, 1280)
    crop: Size = (512, 1024)
    scale_range: tuple[float, float] = (0.75, 1.25)
    flip: bool = True
    select_resize: Size | None = (512, 1024)
    batch_size: int = Field(1, gt=0)  # per process (DDP: global batch = batch_size x world size)
    num_workers: int = Field(2, ge=0)
    # optimisation (segmenter)
    iterations: int = Field(250_000, gt=0)
    lr: float = Field(2.5e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    aux_weight: float = Field(0.1, ge=0)  # weight of the auxiliary head's segmentation loss
    amp: bool = True  # float16 autocast + GradScaler; only ever used on CUDA
    seed: int = Field(1234, ge=0)
    device: str | None = None  # "cuda" / "cpu"; None: dakd_core.train.engine.default_device()
    # outputs
    out: str = Field(..., min_length=1)  # output prefix URI, e.g. {store}/runs/{run}/pretrain_teacher
    checkpoint_every: int = Field(1000, gt=0)
    eval_every: int = Field(1000, gt=0)
    log_every: int = Field(50, gt=0)

    @field_validator("scale_range")
    @classmethod
    def _scale_range(cls, value):
        if not 0 < value[0] <= value[1]:
            raise ValueError("must satisfy 0 < low <= high")
        return value

    @field_validator("source_resize", "crop", "select_resize", "target_resize", check_fields=False)
    @classmethod
    def _positive_size(cls, value):
        if value is not None and min(value) <= 0:
            raise ValueError("must be positive (height, width)")
        return value


class PretrainConfig(TrainConfig):
    """Source-only training: CE on source labels (ignore 255), aux head weighted `aux_weight`."""


class AdaptConfig(TrainConfig):
    """Output-space adversarial adaptation, initialised from a pretrain checkpoint."""

    method: Literal["adaptsegnet", "advent"] = "adaptsegnet"
    init: str = Field(..., min_length=1)  # checkpoint URI (usually the pretrain stage's best.pt)
    target_manifest: str = Field(..., min_length=1)  # unlabelled target training images
    target_resize: Size | None = (512, 1024)
    lambda_adv_main: float = Field(1e-3, ge=0)
    lambda_adv_aux: float = Field(2e-4, ge=0)
    d_lr: float = Field(1e-4, gt=0)
    d_betas: tuple[float, float] = (0.9, 0.99)
    d_ndf: int = Field(64, gt=0)

    @field_validator("d_betas")
    @classmethod
    def _betas(cls, value):
        if not all(0 <= b < 1 for b in value):
            raise ValueError("must lie in [0, 1)")
        return value

    @property
    def discriminator_input(self) -> str:
        """AdaptSegNet's discriminators see softmax maps, ADVENT's the weighted self-information."""
        return "softmax" if self.method == "adaptsegnet" else "entropy"
