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

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dakd_core.config import MAX_LR, StrictConfig
from dakd_core.train.recipes import recipe_for

Size = tuple[int, int]

# Fields that change how or where a run executes but not what it computes: a resumed run may
# change them (`out` too: a copied run directory resumes).
EXECUTION_FIELDS = frozenset({"num_workers", "data_memo_mib", "log_every", "log_mlflow", "device", "out"})


class TrainConfig(StrictConfig):
    # network
    model: str = Field("deeplabv2_resnet101", min_length=1)
    num_classes: int = Field(19, gt=0)
    backbone_weights: str | None = Field(
        None, min_length=1,
        description="pretrained (ImageNet) backbone: a state dict of the model's timm architecture as a path or "
                    "store URI (file://, s3://, pvc://), or timm:TAG (e.g. timm:resnet101.tv_in1k) downloaded "
                    "from the Hugging Face hub; checked key by key against the backbone")
    # data
    source_manifest: str = Field(..., min_length=1)  # labelled source domain (training)
    select_manifest: str | None = None  # labelled target *tuning* split for best-checkpoint selection
    source_resize: Size | None = Field(  # None: native
        (720, 1280), description="size (H, W) source images are resized to before the random scale and crop")
    crop: Size = Field((512, 1024), description="size (H, W) of the random training crop")
    scale_range: tuple[float, float] = (0.75, 1.25)
    flip: bool = True
    photometric: bool = Field(
        False, description="random brightness, contrast and colour gains on labelled source images "
                           "(the first thing a practitioner tries against an appearance shift)")
    select_resize: Size | None = (512, 1024)
    batch_size: int = Field(1, gt=0, description="training batch of each process (DDP: the global batch is this "
                            "times the number of processes)")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes of each training process")
    data_memo_mib: int = Field(
        1024, ge=0, description="MiB of decoded, resized samples each dataset (and the teacher cache) keeps in "
        "memory per data-loading process, so later epochs skip their read and decode; 0 keeps none",
    )
    # optimisation (segmenter). Fields the config leaves unset take the network's recipe
    # (dakd_core/train/recipes.py); the defaults below are the paper's SGD recipe.
    iterations: int = Field(250_000, gt=0, description="training iterations (optimiser steps) of the stage")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="segmenter optimiser (heads at 10x lr with sgd)")
    lr: float = Field(2.5e-4, gt=0, le=MAX_LR, description="base learning rate of the segmenter")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1)  # > 1 would shrink every weight past 0 at lr ~1
    schedule: Literal["poly", "cosine"] = Field("poly", description="learning-rate decay over the iterations")
    poly_power: float = Field(0.9, ge=0)
    warmup_iterations: int = Field(0, ge=0, description="linear learning-rate warm-up from 0")
    aux_weight: float = Field(0.1, ge=0)  # weight of the auxiliary head's segmentation loss
    amp: bool = True  # float16 autocast + GradScaler; only ever used on CUDA
    seed: int = Field(1234, ge=0, description="random seed of initialisation, data order and augmentation "
                                            "(each DDP process adds its rank)")
    device: str | None = None  # "cuda" / "cpu"; None: dakd_core.train.engine.default_device()
    # outputs
    out: str = Field(..., min_length=1)  # output prefix URI, e.g. {store}/runs/{run}/pretrain_teacher
    checkpoint_every: int = Field(1000, gt=0)
    eval_every: int = Field(1000, gt=0, description="iterations between validations on select_manifest (the "
                                                 "best-checkpoint selection)")
    log_every: int = Field(50, gt=0)
    log_mlflow: bool = Field(
        True, description="an MLflow stage run (config as params, metrics, the result); off: the stage neither "
                          "imports MLflow nor contacts a tracking server, and result.json is its only record "
                          "(benchmarks, machines without MLflow)")

    @model_validator(mode="after")
    def _network_recipe(self) -> "TrainConfig":
        """Fields the config leaves unset take the network's recipe. Written past validation (a
        "before" validator would turn build_config's JSON-mode input strict); the recipes are
        constants, each checked against the fields in tests/test_recipes.py."""
        for name, value in recipe_for(self.model).items():
            if name not in self.model_fields_set:
                self.__dict__[name] = value
        return self

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


ADVERSARIAL_METHODS = ("adaptsegnet", "advent")  # dakd_core.train.adapt; the others: train/{road,diga,sfda}.py
METHOD_PREFIXES = ("road_", "diga_", "sfda_")  # fields that only the method of that name reads
# DiGA's EMA teacher: the reference code's xi 0.999 over its 80 000 warm-up iterations
# (train_DiGA_gta2city_warm_up.py) halves the weight of a past student every ln 0.5 / ln 0.999 =
# 692.8 steps, 0.87 % of the warm-up; DiGA's loop scales xi to keep that fraction at any budget.
DIGA_EMA_HALF_LIFE = math.log(0.5) / math.log(0.999) / 80_000
SFDA_WEIGHT_DECAY = 1e-4  # the segmenter's weight decay under method sfda unless set


class AdaptConfig(TrainConfig):
    """Unsupervised adaptation from a pretrain checkpoint: output-space adversarial (AdaptSegNet,
    ADVENT) or ROAD / DiGA / source-free SFDA (their `road_*` / `diga_*` / `sfda_*` fields;
    defaults from the papers, see dakd_core/losses/{road,diga,sfda}.py)."""

    method: Literal["adaptsegnet", "advent", "road", "diga", "sfda"] = Field(
        "adaptsegnet", description="unsupervised adaptation method: adaptsegnet / advent (output-space adversarial), "
        "road, diga, or sfda (source-free: no source images)")
    # required by every method but the source-free sfda, which never reads it
    source_manifest: str | None = Field(None, min_length=1)
    init: str = Field(..., min_length=1)  # checkpoint URI (usually the pretrain stage's best.pt)
    target_manifest: str = Field(..., min_length=1)  # unlabelled target training images
    target_resize: Size | None = Field(  # None: native
        (512, 1024), description="size (H, W) target images are resized to before cropping")
    bn_statistics: Literal["target", "both"] = Field(
        "target", description="whose batches update the BatchNorm running statistics that evaluation and "
        "export use: 'target' (source batches are normalised with their own statistics but leave the "
        "running averages alone, so the adapted model normalises target images with target statistics) "
        "or 'both' (every forward pass; the same as 'target' for networks with frozen BatchNorm)")
    lambda_adv_main: float = Field(1e-3, ge=0, description="weight of the adversarial loss on the main output")
    lambda_adv_aux: float = Field(2e-4, ge=0, description="weight of the adversarial loss on the auxiliary output")
    d_lr: float = Field(1e-4, gt=0, le=MAX_LR)
    d_betas: tuple[float, float] = (0.9, 0.99)
    d_ndf: int = Field(64, gt=0, description="channels of the discriminators' first layer (AdaptSegNet: 64)")
    d_input_scale: float = Field(
        1.0, gt=0, le=1, description="the discriminators see the output maps resized to this fraction of the "
        "training crop (AdaptSegNet: 1, the image size, which stride-8 logits need); 0.5 suits networks whose "
        "logits are at stride 2: the same maps, a quarter of the discriminators' work")
    # ROAD (seed 003): L = L_seg + road_lambda_dist * L_dist + road_lambda_spt * L_spt, rows x cols regions
    road_lambda_dist: float = Field(0.1, ge=0)
    road_lambda_spt: float = Field(0.01, ge=0)
    road_grid: tuple[int, int] = (3, 3)
    road_reference: str = Field(
        "imagenet", min_length=1,
        description="ROAD's frozen real-style model z of L_dist (eq. 1): 'imagenet' = the network built with "
        "`backbone_weights` (ImageNet-pretrained backbone, ROAD section 3.1: a model pretrained on real images; "
        "needs backbone_weights), 'init' = the init checkpoint (the source-trained network: a deviation for "
        "networks without pretrained weights, it pulls towards the synthetic-trained model), or the URI of a "
        "checkpoint of the same network pretrained on real images")
    road_reference_statistics: Literal["running", "batch"] = Field(
        "running",
        description="BatchNorm statistics the frozen reference normalises the target crops with: 'running' (eval "
        "mode: its own running averages; under road_reference 'init' those of the source domain) or 'batch' "
        "(each target batch's own statistics, as the student's target forward; running averages untouched)")
    # DiGA (seed 001): the first diga_warmup_fraction of the iterations warm up, the rest self-train
    diga_warmup_fraction: float = Field(0.5, gt=0, le=1)
    diga_alpha: float = Field(1.0, ge=0)  # weight of H(teacher(strong), student(clean)) in eq. 4
    diga_ema_half_life: float = Field(
        DIGA_EMA_HALF_LIFE, gt=0, le=1,
        description="half-life of the EMA teacher (eq. 5) as a fraction of the warm-up steps W: per step "
        "xi = 0.5 ** (1 / (diga_ema_half_life * W)). The default is the paper's xi 0.999 at its 80 000 warm-up "
        "steps (a 692.8-step half-life); a fixed xi 0.999 over a 200-step warm-up would keep 0.999^200 = 0.82 of "
        "the source-only weights in the teacher and so in the pseudo-labeller")
    diga_proto_momentum: float = Field(0.99, ge=0, lt=1)  # delta of eq. 10
    diga_lambda_distil: float = Field(1.0, ge=0)
    diga_lambda_seg: float = Field(1.0, ge=0)
    # SFDA (seed 002), eq. 11 / 16 weights; never reads source_manifest
    sfda_alpha: float = Field(1.0, ge=0)  # MAE
    sfda_beta: float = Field(0.5, ge=0)  # DAD between fixed and adapted model
    sfda_tau: float | None = Field(None, ge=0)  # DAD fake vs target in G's objective; None: = beta
    sfda_gamma: float = Field(0.01, ge=0)  # IPSM adversarial
    sfda_patches: int = Field(3, ge=1)  # K of the K x K IPSM patches
    sfda_latent: int = Field(256, gt=0)
    sfda_g_lr: float = Field(0.1, gt=0, le=MAX_LR)  # generator Adam lr (paper: 0.1)
    sfda_d_lr: float = Field(0.1, gt=0, le=MAX_LR, description="IPSM patch discriminator's Adam lr (paper: 0.1; "
                             "d_lr, AdaptSegNet's 1e-4, is not used by sfda)")
    sfda_fake_size: Size | None = None  # fake image (height, width); None: half the crop

    @field_validator("road_grid", "sfda_fake_size")
    @classmethod
    def _positive_pair(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _method_fields(self) -> "AdaptConfig":
        if self.source_manifest is None and self.method != "sfda":
            raise ValueError(f"field 'source_manifest' is required for method '{self.method}'")
        # A field of another method would be silently ignored: refuse it instead.
        for name in sorted(self.model_fields_set):
            prefix = next((p for p in METHOD_PREFIXES if name.startswith(p)), None)
            if prefix and prefix[:-1] != self.method:
                raise ValueError(f"field '{name}' applies to method '{prefix[:-1]}' only, not '{self.method}'")
        if self.method == "road" and self.road_reference == "imagenet" and not self.backbone_weights:
            raise ValueError("field 'road_reference' is 'imagenet' (ROAD's ImageNet-pretrained reference), which "
                             "needs 'backbone_weights'; set those, or road_reference to 'init' or a checkpoint URI")
        if self.method == "sfda" and "weight_decay" not in self.model_fields_set:
            # SFDA trains the segmenter with weight decay 1e-4 (seed 002 sec. 4.1), AdaptSegNet 5e-4.
            self.__dict__["weight_decay"] = SFDA_WEIGHT_DECAY
        if self.method == "sfda" and self.batch_size % 2:
            raise ValueError("field 'batch_size' must be even for method 'sfda' (IPSM ranks halves of a batch)")
        return self

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
