"""Pipeline parameters: one strict model, the single source of the defaults.

`pipelines/dakd_pipeline.py` takes its parameter defaults from `PipelineParams`, `dakd run` reads
`RunConfig` (pipeline parameters plus local settings) from YAML, and `dakd submit --params` checks
its file against `PipelineParams`, so a typo in a parameter name is an error naming the field
before anything runs.
"""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field

from dakd_core.config import MAX_LR, StrictConfig, build_config
from dakd_core.train.configs import AdaptConfig

AdaptMethod = AdaptConfig.model_fields["method"].annotation  # the choices are the adapt stage's

RUN_NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"


def _field(default, description: str, **constraints):
    """A pipeline parameter: its default, its one description (CLI help, KFP form, docs), its bounds."""
    return Field(default, description=description, **constraints)


class PipelineParams(StrictConfig):
    """The parameters of one pipeline run, as the KFP UI form shows them (descriptions included)."""

    # data: dataset layout + root URI of each domain (dakd_core.data.formats)
    source_format: str = _field("gta5", "dataset layout of the labelled source domain (a dakd_core.data.formats "
                                "name, e.g. gta5, synthia, cityscapes)", min_length=1)
    source_uri: str = _field("s3://dakd/raw/gta5", "root of the source dataset: s3://bucket/prefix, "
                             "pvc://claim/path or a directory", min_length=1)
    target_format: str = _field("cityscapes", "dataset layout of the unlabelled target domain (its val split "
                                "is labelled and used for evaluation)", min_length=1)
    target_uri: str = _field("s3://dakd/raw/cityscapes", "root of the target dataset: s3://bucket/prefix, "
                             "pvc://claim/path or a directory", min_length=1)
    store_uri: str = _field("s3://dakd/store", "store root every stage writes under: datasets/, stages/ "
                            "(content-addressed stage outputs, shared by runs) and runs/<run_name>/", min_length=1)
    # One store key segment: no "/", no "..", nothing a shell or S3 mangles.
    run_name: str = _field("", "name of this run's folder under runs/ and of its MLflow parent run; empty: "
                           "kfp-<KFP run id>", pattern=RUN_NAME_PATTERN)
    # networks
    teacher_model: str = _field("deeplabv2_resnet101", "teacher network (dakd_core.models registry name)",
                                min_length=1)
    student_model: str = _field("deeplabv2_resnet18", "student network (dakd_core.models registry name)",
                                min_length=1)
    teacher_weights: str = _field("", "initial backbone weights of the teacher: a store URI of a state dict or a "
                                  "timm hub name (ImageNet); empty: from scratch")
    student_weights: str = _field("", "initial backbone weights of the student: a store URI of a state dict or a "
                                  "timm hub name (ImageNet); empty: from scratch")
    # training resolution (H, W) and budgets
    source_resize_h: int = _field(720, "height source images are resized to before cropping", gt=0)
    source_resize_w: int = _field(1280, "width source images are resized to before cropping", gt=0)
    target_resize_h: int = _field(512, "height target images are resized to before cropping", gt=0)
    target_resize_w: int = _field(1024, "width target images are resized to before cropping", gt=0)
    crop_h: int = _field(512, "height of the random training crop", gt=0)
    crop_w: int = _field(1024, "width of the random training crop", gt=0)
    pretrain_iterations: int = _field(20_000, "source-only training iterations of each network", gt=0)
    adapt_iterations: int = _field(100_000, "adversarial adaptation iterations of each network", gt=0)
    distill_iterations: int = _field(100_000, "distillation iterations (paradigm d: per stage, c then d)", gt=0)
    teacher_batch_size: int = _field(1, "teacher training batch per GPU process", gt=0)
    student_batch_size: int = _field(1, "student training batch per GPU process", gt=0)
    gpus_per_task: int = _field(1, "GPUs of each training task (its accelerator limit); N > 1 runs the stage as N "
                                "torchrun processes, each with its own batch", ge=1)
    # the segmenter's recipe: "network" / 0 take each network's own (dakd_core/train/recipes.py)
    optimizer: Literal["network", "sgd", "adamw"] = _field(
        "network", "segmenter optimiser; network: the network's own recipe (the paper's SGD for DeepLab, "
        "AdamW + cosine for the CPU-scale networks)")
    lr: float = _field(0.0, "base learning rate of the segmenter; 0: the network's recipe", ge=0,
                       le=MAX_LR)
    eval_every: int = _field(2000, "iterations between checkpoints and validation", gt=0)
    num_workers: int = _field(2, "DataLoader worker processes per training task", ge=0)
    # adaptation (AdaptSegNet / ADVENT)
    adaptation_method: AdaptMethod = _field(
        "adaptsegnet", "unsupervised adaptation of teacher and student before distillation")
    # distillation keeps an output-space alignment whatever method adapted the networks
    distill_adversarial_method: Literal["adaptsegnet", "advent"] = _field(
        "adaptsegnet", "the student's own adversarial adaptation loss while distilling")
    lambda_adv_main: float = _field(1e-3, "weight of the adversarial loss on the main output", ge=0)
    lambda_adv_aux: float = _field(2e-4, "weight of the adversarial loss on the auxiliary output", ge=0)
    # On CPU a 64-wide D costs more than a small student.
    discriminator_width: int = _field(64, "channels of the discriminators' first layer (AdaptSegNet: 64)", gt=0)
    # distillation (DAKD)
    paradigm: Literal["a", "b", "c", "d"] = _field(
        "d", "DAKD paradigm: a distils on source, b on target, c on both, d is b started from a c checkpoint")
    lambda_kl: float = _field(0.1, "weight of the KL distillation loss on the main output", ge=0)
    lambda_kl_aux: float = _field(0.01, "weight of the KL distillation loss on the auxiliary output", ge=0)
    lambda_mse: float = _field(0.01, "weight of the MSE distillation loss between output maps", ge=0)
    lambda_pseudo: float = _field(1.0, "weight of the cross-entropy on the teacher's target pseudo-labels", ge=0)
    lambda_target: float = _field(1.0, "weight of the target-domain distillation terms", ge=0)
    temperature: float = _field(1.0, "softmax temperature of the KL distillation", gt=0)
    kl_reduction: Literal["class_mean", "class_sum"] = _field(
        "class_sum", "how KL(teacher || student) reduces over the classes: class_sum (the measured setting of "
        "docs/results.md) or class_mean (the reference code's scale of lambda_kl)")
    # real-time students (issue 9; DistillConfig)
    seg_loss: Literal["ce", "border_focal"] = _field(
        "ce", "the student's source segmentation loss: cross-entropy or border-weighted focal")
    focal_gamma: float = _field(2.0, "focusing exponent of the border focal loss", ge=0)
    lambda_border_kl: float = _field(0.0, "weight of the border-weighted KL distillation", ge=0)
    lambda_l2_feature: float = _field(0.0, "weight of the L2 feature distillation (needs teacher_online)", ge=0)
    lambda_cwd: float = _field(0.0, "weight of channel-wise distillation (needs teacher_online)", ge=0)
    cwd_tau: float = _field(4.0, "temperature of channel-wise distillation", gt=0)
    lambda_lad: float = _field(0.0, "weight of the LAD feature distillation (needs teacher_online)", ge=0)
    feature_level: str = _field("last", "backbone level the feature losses compare", min_length=1)
    teacher_online: bool = _field(False, "run the teacher live instead of reading its cache (required by the "
                                  "feature losses)")
    # evaluation / export
    eval_resize_h: int = _field(512, "height of evaluation, export and latency inputs", gt=0)
    eval_resize_w: int = _field(1024, "width of evaluation, export and latency inputs", gt=0)
    seed: int = _field(1234, "random seed of every training stage", ge=0)
    # tracking / registry
    mlflow_experiment: str = _field("dakd", "MLflow experiment of the parent run and the stage runs",
                                    min_length=1)
    registered_model: str = _field("", "MLflow registered model name; empty: dakd-<source_format>-to-"
                                   "<target_format>")
    promotion_min_gain: float = _field(
        0.001, "smallest mIoU gain over the champion that moves the champion alias (0.001 = 0.1 point)", ge=0)


def form_description(name: str) -> str:
    """The text of a parameter in the KFP form: its description, and its choices when it has some."""
    info = PipelineParams.model_fields[name]
    choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is Literal else ()
    return f"{info.description} (one of: {', '.join(choices)})" if choices else info.description


def pipeline_docstring(summary: str) -> str:
    """A Google-style docstring with an "Args:" line per parameter: KFP puts each description into
    the compiled pipeline's inputDefinitions, so the UI's run form shows it. (docstring_parser
    reads no Args section without a summary line before it.)"""
    return f"{summary}\n\nArgs:\n" + "".join(f"    {name}: {form_description(name)}\n" for name in PipelineParams.model_fields)


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
