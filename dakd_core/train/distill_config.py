"""`DistillConfig`: the settings of `dakd distill` (kept free of torch so the CLI stays light).

Defaults are DAKD's (seed 000): lambda_KL 0.1 on the output level and a tenth of it on the
feature (aux) level, lambda_MSE 0.01, lambda_pseudoT 1.0, lambda_target 1.0, temperature 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dakd_core.train.configs import AdaptConfig, Size

# Which domains' images are distilled under each of DAKD's paradigms (d = b from a c checkpoint).
PARADIGM_DOMAINS = {"a": ("source",), "b": ("target",), "c": ("source", "target"), "d": ("target",)}


class DistillConfig(AdaptConfig):
    """AdaptConfig (`init` = the student's own adapted checkpoint) plus distillation settings."""

    method: Literal["adaptsegnet", "advent"] = "adaptsegnet"  # the student's own (adversarial) DA
    paradigm: Literal["a", "b", "c", "d"] = "c"
    teacher: str | None = None  # teacher checkpoint URI (required with teacher_online or a gate)
    teacher_cache: str | None = None  # index.parquet URI written by `dakd cache-teacher`
    teacher_online: bool = False  # run the live teacher on every batch instead of the cache
    temperature: float = Field(1.0, gt=0)
    lambda_kl: float = Field(0.1, ge=0)
    lambda_kl_aux: float | None = Field(None, ge=0)  # None: lambda_kl / 10 (paper)
    lambda_mse: float = Field(0.01, ge=0)
    lambda_pseudo: float = Field(1.0, ge=0)
    lambda_target: float = Field(1.0, ge=0)
    pseudo_threshold: float = Field(0.0, ge=0, lt=1)  # teacher confidence below it -> ignored
    target_augment: bool = False  # random scale + flip on target crops too (off: crop only)
    gate_manifest: str | None = None  # labelled target tuning split for the teacher-quality gate
    gate: Literal["error", "warn"] = "error"
    gate_resize: Size | None = (512, 1024)
    gate_max_images: int = Field(100, gt=0)  # target images for the unsupervised proxies

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
        if not self.teacher_online and not self.teacher_cache:
            raise ValueError("set 'teacher_cache' (index.parquet of dakd cache-teacher) or teacher_online")
        if self.gate_manifest and not self.teacher:
            raise ValueError("gate_manifest needs 'teacher' to score the teacher")
        return self

    @property
    def kl_aux_weight(self) -> float:
        return self.lambda_kl / 10 if self.lambda_kl_aux is None else self.lambda_kl_aux
