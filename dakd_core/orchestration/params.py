"""Pipeline parameters: one strict model, the single source of the defaults.

`pipelines/dakd_pipeline.py` takes its parameter defaults from `PipelineParams`, `dakd run` reads
`RunConfig` (pipeline parameters plus local settings) from YAML, and `dakd submit --config` reads
the same file and checks its `params` against `PipelineParams`, so a typo in a parameter name is an error naming the field
before anything runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dakd_core.config import MAX_LR, StrictConfig, build_config

RUN_NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"


class PipelineParams(StrictConfig):
    # data: dataset layout + root URI of each domain (dakd_core.data.formats)
    source_format: str = "gta5"
    source_uri: str = "s3://dakd/raw/gta5"
    target_format: str = "cityscapes"
    target_uri: str = "s3://dakd/raw/cityscapes"
    # where every stage writes ({store}/datasets, {store}/runs/{run_name}/...)
    store_uri: str = "s3://dakd/store"
    # empty: the KFP run id. One store key segment: no "/", no "..", nothing a shell or S3 mangles.
    run_name: str = Field("", pattern=RUN_NAME_PATTERN)
    # networks
    teacher_model: str = "deeplabv2_resnet101"
    student_model: str = "deeplabv2_resnet18"
    # training resolution (H, W) and budgets
    source_resize_h: int = Field(720, gt=0)
    source_resize_w: int = Field(1280, gt=0)
    target_resize_h: int = Field(512, gt=0)
    target_resize_w: int = Field(1024, gt=0)
    crop_h: int = Field(512, gt=0)
    crop_w: int = Field(1024, gt=0)
    pretrain_iterations: int = Field(20_000, gt=0)
    adapt_iterations: int = Field(100_000, gt=0)
    distill_iterations: int = Field(100_000, gt=0)
    teacher_batch_size: int = Field(1, gt=0)
    student_batch_size: int = Field(1, gt=0)
    # the segmenter's recipe: "network" / 0 take each network's own (dakd_core/train/recipes.py:
    # the paper's SGD for DeepLab/SwiftNet-R18, AdamW + cosine for the CPU-scale networks)
    optimizer: Literal["network", "sgd", "adamw"] = "network"
    lr: float = Field(0.0, ge=0, le=MAX_LR)
    eval_every: int = Field(2000, gt=0)
    num_workers: int = Field(2, ge=0)  # DataLoader workers per training task
    # adaptation (AdaptSegNet / ADVENT)
    adaptation_method: str = "adaptsegnet"  # any AdaptConfig.method (validated by the adapt stage)
    # The student's own adversarial DA losses while distilling (adaptsegnet | advent): distillation
    # keeps an output-space alignment whatever method adapted the networks.
    distill_adversarial_method: Literal["adaptsegnet", "advent"] = "adaptsegnet"
    lambda_adv_main: float = Field(1e-3, ge=0)
    lambda_adv_aux: float = Field(2e-4, ge=0)
    # discriminator width (AdaptSegNet: 64). On CPU a 64-wide D costs more than a small student.
    discriminator_width: int = Field(64, gt=0)
    # distillation (DAKD): paradigm and every weight and the temperature
    paradigm: Literal["a", "b", "c", "d"] = "d"
    lambda_kl: float = Field(0.1, ge=0)
    lambda_kl_aux: float = Field(0.01, ge=0)
    lambda_mse: float = Field(0.01, ge=0)
    lambda_pseudo: float = Field(1.0, ge=0)
    lambda_target: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    # KL(teacher || student) over the classes: class_sum (default, the measured one) | class_mean (the reference code's scale of lambda_kl)
    kl_reduction: Literal["class_mean", "class_sum"] = "class_sum"
    # real-time students (issue 9; DistillConfig): border-focal source loss, border-weighted KL,
    # feature distillation (L2 / CWD / LAD on `feature_level`; needs teacher_online)
    seg_loss: Literal["ce", "border_focal"] = "ce"
    focal_gamma: float = Field(2.0, ge=0)
    lambda_border_kl: float = Field(0.0, ge=0)
    lambda_l2_feature: float = Field(0.0, ge=0)
    lambda_cwd: float = Field(0.0, ge=0)
    cwd_tau: float = Field(4.0, gt=0)
    lambda_lad: float = Field(0.0, ge=0)
    feature_level: str = Field("last", min_length=1)
    teacher_online: bool = False  # live teacher instead of the cache (required by feature losses)
    # evaluation / export
    eval_resize_h: int = Field(512, gt=0)
    eval_resize_w: int = Field(1024, gt=0)
    seed: int = Field(1234, ge=0)
    # tracking / registry
    mlflow_experiment: str = Field("dakd", min_length=1)
    registered_model: str = ""  # empty: dakd-<source_format>-to-<target_format>
    # smallest mIoU gain over the champion that moves the alias (dakd_core.registry.PromoteConfig)
    promotion_min_gain: float = Field(0.001, ge=0)


class LocalSettings(StrictConfig):
    """What only `dakd run` needs: where to write, and the built-in synthetic pair's size."""

    out_dir: str = "demo_out"
    # True: generate the built-in synthetic pair and use it as source/target (the formats and URIs
    # in `params` are then replaced); False: use params.source_uri/target_uri (local directories).
    synthetic: bool = True
    synth_train: int = Field(8, gt=0)  # images per domain in the training splits
    synth_val: int = Field(4, gt=0)
    synth_width: int = Field(128, gt=0)
    synth_height: int = Field(64, gt=0)
    synth_shift: float = Field(0.45, ge=0, le=1)  # target appearance shift (dakd synth --shift)
    synth_target_layout: Literal["source", "camera"] = "source"  # dakd synth --target-layout
    weather: bool = False


class RunConfig(StrictConfig):
    params: PipelineParams = PipelineParams()
    local: LocalSettings = LocalSettings()


def load_run_config(path: str | None, **local_overrides) -> RunConfig:
    cfg = build_config(RunConfig, path)
    if local_overrides:
        merged = cfg.local.model_dump() | {k: v for k, v in local_overrides.items() if v is not None}
        cfg = RunConfig(params=cfg.params, local=LocalSettings(**merged))
    return cfg


def load_params(path: str | None, **overrides) -> PipelineParams:
    return build_config(PipelineParams, path, **overrides)
