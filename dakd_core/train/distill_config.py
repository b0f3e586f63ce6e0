"""`DistillConfig`: the settings of `dakd distill` (kept free of torch so the CLI stays light).

Defaults are DAKD's (seed 000): lambda_KL 0.1 on the output level and a tenth of it on the
feature (aux) level, lambda_MSE 0.01, lambda_pseudoT 1.0, lambda_target 1.0, temperature 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dakd_core.train.configs import AdaptConfig, Size

# Which domains' images are distilled under each of DAKD's paradigms (d = b from a c checkpoint).
# "none" distils nothing: the student's own adaptation continued with the distillation schedule,
# the control that a distilled student must beat (dakd bench results' student_continued).
PARADIGM_DOMAINS = {"a": ("source",), "b": ("target",), "c": ("source", "target"), "d": ("target",), "none": ()}


class DistillConfig(AdaptConfig):
    """AdaptConfig (`init` = the student's own adapted checkpoint) plus distillation settings."""

    method: Literal["adaptsegnet", "advent"] = Field(
        "adaptsegnet", description="the student's own adversarial adaptation loss while distilling")
    paradigm: Literal["a", "b", "c", "d", "none"] = Field(
        "c", description="DAKD paradigm: a distils on source, b on target, c on both, d is b started from a c "
        "checkpoint; none distils nothing (the student's adaptation continued for the same iterations: the "
        "control without a teacher)")
    teacher: str | None = None  # teacher checkpoint URI (required with teacher_online or a gate)
    teacher_cache: str | None = None  # index.parquet URI written by `dakd cache-teacher`
    teacher_online: bool = Field(False, description="run the teacher live on every batch instead of reading its "
                                 "cache (required by the feature losses)")
    bn_source_images: int = Field(
        256, ge=0, description="with teacher_online and source distillation (paradigms a, c): source images the "
        "live teacher's BatchNorm statistics are re-estimated on for the source batches (its own are the target "
        "domain's); 0 keeps the checkpoint's for both domains (dakd cache-teacher has the same setting)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KL distillation")
    kl_reduction: Literal["class_mean", "class_sum"] = Field(
        "class_sum", description="reduction of KL(teacher || student) over the classes: class_sum = the per-pixel "
        "KL (the default: every results row in docs/results.md was measured with it; C times the reference code's "
        "scale at the same lambda_kl); class_mean = per-pixel KL / C, the DAKD reference code's element mean that "
        "lambda_kl 0.1 was tuned at (the bench's kl_class_mean row)")
    lambda_kl: float = Field(0.1, ge=0, description="weight of the KL distillation loss on the main output")
    lambda_kl_aux: float | None = Field(None, ge=0, description="weight of the KL distillation loss on the auxiliary "
                                        "output (DAKD: lambda_kl / 10, which an unset value takes)")
    lambda_mse: float = Field(0.01, ge=0, description="weight of the MSE distillation loss between output maps")
    lambda_pseudo: float = Field(1.0, ge=0, description="weight of the cross-entropy on the teacher's target "
                                 "pseudo-labels")
    lambda_target: float = Field(1.0, ge=0, description="weight of the target-domain distillation terms")
    pseudo_threshold: float = Field(0.0, ge=0, lt=1)  # teacher confidence below it -> ignored
    target_augment: bool = False  # random scale + flip on target crops too (off: crop only)
    gate_manifest: str | None = None  # labelled target tuning split for the teacher-quality gate
    gate: Literal["error", "warn"] = "error"
    gate_resize: Size | None = (512, 1024)
    gate_max_images: int = Field(100, gt=0)  # target images for the unsupervised proxies
    # Real-time students under adverse weather (seed 004, thesis eqs. 3.3-3.9); all off by default.
    seg_loss: Literal["ce", "border_focal"] = Field(  # eq. 3.3
        "ce", description="the student's source segmentation loss (both heads): cross-entropy or border-weighted "
        "focal")
    focal_gamma: float = Field(2.0, ge=0, description="focusing exponent of the border focal loss")
    lambda_border_kl: float = Field(0.0, ge=0, description="weight of the border-weighted KL distillation on the "
                                    "main output")  # eq. 3.5
    # Feature distillation on `feature_level` (a key of both networks' forward_features); needs the
    # live teacher (the cache stores output maps only). A 1x1 FeatureAdapter maps the student's
    # channels to the teacher's when they differ; it is trained with the student and checkpointed.
    lambda_l2_feature: float = Field(0.0, ge=0, description="weight of the L2 feature distillation (needs "
                                     "teacher_online)")  # eq. 3.6
    lambda_cwd: float = Field(0.0, ge=0, description="weight of channel-wise distillation (needs "
                              "teacher_online)")  # eqs. 3.7-3.8
    cwd_tau: float = Field(4.0, gt=0, description="temperature of channel-wise distillation")
    lambda_lad: float = Field(0.0, ge=0, description="weight of the LAD feature distillation, a layer-normalised "
                              "feature distance (needs teacher_online)")  # eq. 3.9
    feature_level: str = Field("last", min_length=1, description="backbone level the feature losses compare (a "
                               "key of both networks' forward_features)")

    @field_validator("gate_resize")
    @classmethod
    def _gate_size(cls, value):
        if value is not None and min(value) <= 0:
            raise ValueError("must be positive (height, width)")
        return value

    @model_validator(mode="after")
    def _targets_source(self) -> "DistillConfig":
        if self.teacher_online and not self.teacher:
            raise ValueError("teacher_online needs 'teacher' (the teacher checkpoint URI)")
        if not self.teacher_online and not self.teacher_cache and self.paradigm != "none":
            raise ValueError("set 'teacher_cache' (index.parquet of dakd cache-teacher) or teacher_online")
        if self.feature_distillation and not self.teacher_online:
            raise ValueError(
                "lambda_l2_feature / lambda_cwd / lambda_lad need teacher_online (the teacher cache "
                "holds output maps, not intermediate features)"
            )
        if self.gate_manifest and not self.teacher:
            raise ValueError("gate_manifest needs 'teacher' to score the teacher")
        return self

    @property
    def feature_distillation(self) -> bool:
        return self.lambda_l2_feature > 0 or self.lambda_cwd > 0 or self.lambda_lad > 0

    @property
    def kl_aux_weight(self) -> float:
        return self.lambda_kl / 10 if self.lambda_kl_aux is None else self.lambda_kl_aux
