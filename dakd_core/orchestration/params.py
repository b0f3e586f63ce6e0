"""Pipeline parameters: one strict model, the single source of the defaults.

`pipelines/dakd_pipeline.py` takes its parameter defaults from `PipelineParams`, `dakd run` reads
`RunConfig` (pipeline parameters plus local settings) from YAML, and `dakd submit --params` checks
its file against `PipelineParams`, so a typo in a parameter name is an error naming the field
before anything runs.

One parameter, one place: a parameter that sets a stage config field is declared with `_from`,
which takes the field's type, bounds, description and default from the stage config (the text
`dakd <stage> --help` prints too); dakd_core/orchestration/plan.py passes it to every stage whose
config has the field of that name. A parameter that is one part of a stage field (the teacher's
or the student's batch size, one stage's iterations, the height or width of a size: `side`) takes
the field's text with a note naming the part; plan.py maps each of those explicitly. Only what is no
stage field (datasets, store and tracking names, networks, GPUs) and the evaluation size (its
ExportConfig / EvalConfig fields live in modules that import torch, which `dakd compile` must not)
is declared here with its own text.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types
from pydantic import Field

from dakd_core.config import StrictConfig, build_config, without_none
from dakd_core.registry import PromoteConfig
from dakd_core.train.configs import AdaptConfig, PretrainConfig, TrainConfig
from dakd_core.train.distill_config import DistillConfig

RUN_NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"
_STAGE_DEFAULT = object()  # `_from` without `default`: the stage field's
SIDES = ("height", "width")  # the parts of an (H, W) size field, in its order


def _field(default, description: str, **constraints):
    """A pipeline parameter: its default, its one description (CLI help, KFP form, docs), its bounds."""
    return Field(default, description=description, **constraints)


@dataclass(frozen=True)
class StageField:
    """The stage config field a pipeline parameter is (`_from`), kept in the parameter's metadata.

    `unset`: the parameter's value that leaves the field unset, so the stage takes the network's
    recipe (a form field always has a value; None: every value is passed on). `side`: the part of
    an (H, W) size field the parameter is ("height" or "width"). `note`: what the pipeline adds to
    the field's description (after "its <side>")."""

    config: type[StrictConfig]
    field: str
    unset: object = None
    note: str = ""
    side: str = ""

    @property
    def description(self) -> str:
        parts = (self.config.model_fields[self.field].description, self.side and f"its {self.side}", self.note)
        return "; ".join(part for part in parts if part)


def _admitting(constraint, unset):
    """A bound `> unset` becomes `>= unset`, so the form's unset value passes (lr 0: the recipe's)."""
    if unset is not None and isinstance(constraint, annotated_types.Gt) and constraint.gt == unset:
        return annotated_types.Ge(unset)
    return constraint


def _side(annotation, index: int) -> tuple[type, list]:
    """Type and bounds of one side of an (H, W) size annotation: the element's own (HW's
    PositiveInt), else > 0, what the training configs' size validators check."""
    element = typing.get_args(annotation)[index]
    if typing.get_origin(element) is Annotated:
        base, *bounds = typing.get_args(element)
        return base, bounds
    return element, [annotated_types.Gt(0)]


def _from(config: type[StrictConfig], field: str, *, default=_STAGE_DEFAULT, unset=None, note: str = "",
          side: str = ""):
    """The type of a parameter that is the stage config field `config.field`: its annotation (a
    form field has a value: `T | None` is T), bounds and description, and its default unless the
    pipeline's differs (`default`; with `unset`, the default is `unset` and a Literal offers it
    as one more choice). With `side` ("height" / "width"), the parameter is that side of a size
    field: the side's type, bounds and default. Used as the annotation:
    `lambda_kl: _from(DistillConfig, "lambda_kl")`, `crop_h: _from(TrainConfig, "crop", side="height")`."""
    info = config.model_fields[field]
    if not info.description:
        raise TypeError(f"{config.__name__}.{field} has no description: the pipeline form shows it")
    if side and side not in SIDES:
        raise TypeError(f"side {side!r} of {config.__name__}.{field}: one of {', '.join(SIDES)}")
    source = StageField(config, field, unset, note, side)
    annotation = without_none(info.annotation)
    bounds = info.metadata
    if side:
        annotation, bounds = _side(annotation, SIDES.index(side))
    if unset is not None and typing.get_origin(annotation) is Literal:
        annotation = Literal[(unset, *typing.get_args(annotation))]
    if unset is not None:
        default = unset
    elif default is _STAGE_DEFAULT:
        default = info.default[SIDES.index(side)] if side else info.default
    constraints = [_admitting(c, unset) for c in bounds]
    return Annotated[(annotation, *constraints, Field(default, description=source.description), source)]


def stage_fields() -> dict[str, StageField]:
    """Parameter name -> the stage config field it is, for the parameters declared with `_from`."""
    return {name: meta for name, info in PipelineParams.model_fields.items() for meta in info.metadata
            if isinstance(meta, StageField)}


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
    # training resolution (H, W) and budgets: parts of one stage field each (plan.py maps them)
    source_resize_h: _from(TrainConfig, "source_resize", side="height")
    source_resize_w: _from(TrainConfig, "source_resize", side="width")
    target_resize_h: _from(AdaptConfig, "target_resize", side="height")
    target_resize_w: _from(AdaptConfig, "target_resize", side="width")
    crop_h: _from(TrainConfig, "crop", side="height")
    crop_w: _from(TrainConfig, "crop", side="width")
    pretrain_iterations: _from(PretrainConfig, "iterations", default=20_000, note="source-only pretraining of each "
                               "network")
    adapt_iterations: _from(AdaptConfig, "iterations", default=100_000, note="adaptation of each network")
    distill_iterations: _from(DistillConfig, "iterations", default=100_000, note="distillation (paradigm d: each "
                              "of its stages, c then d)")
    teacher_batch_size: _from(TrainConfig, "batch_size", note="the teacher's (pretrain, adapt)")
    student_batch_size: _from(TrainConfig, "batch_size", note="the student's (pretrain, adapt, distill)")
    gpus_per_task: int = _field(1, "GPUs of each training task (its accelerator limit); N > 1 runs the stage as N "
                                "torchrun processes, each with its own batch", ge=1)
    # the segmenter's recipe: "network" / 0 leave the field to each network's own (dakd_core/train/recipes.py)
    optimizer: _from(TrainConfig, "optimizer", unset="network", note="network: the network's own recipe (the "
                     "paper's SGD for DeepLab, AdamW + cosine for the CPU-scale networks)")
    lr: _from(TrainConfig, "lr", unset=0.0, note="0: the network's recipe")
    eval_every: _from(TrainConfig, "eval_every", default=2000, note="the pipeline sets no select_manifest: there, the "
                      "checkpoint interval")
    num_workers: _from(TrainConfig, "num_workers")
    # adaptation of teacher and student before distillation
    adaptation_method: _from(AdaptConfig, "method")
    # distillation keeps an output-space alignment whatever method adapted the networks
    distill_adversarial_method: _from(DistillConfig, "method")
    lambda_adv_main: _from(AdaptConfig, "lambda_adv_main")
    lambda_adv_aux: _from(AdaptConfig, "lambda_adv_aux")
    # On CPU a 64-wide D costs more than a small student.
    discriminator_width: _from(AdaptConfig, "d_ndf")
    discriminator_input_scale: _from(AdaptConfig, "d_input_scale")
    # distillation (DAKD)
    paradigm: _from(DistillConfig, "paradigm", default="d")
    lambda_kl: _from(DistillConfig, "lambda_kl")
    lambda_kl_aux: _from(DistillConfig, "lambda_kl_aux", default=0.01)
    lambda_mse: _from(DistillConfig, "lambda_mse")
    lambda_pseudo: _from(DistillConfig, "lambda_pseudo")
    lambda_target: _from(DistillConfig, "lambda_target")
    temperature: _from(DistillConfig, "temperature")
    kl_reduction: _from(DistillConfig, "kl_reduction")
    # real-time students (issue 9)
    seg_loss: _from(DistillConfig, "seg_loss")
    focal_gamma: _from(DistillConfig, "focal_gamma")
    lambda_border_kl: _from(DistillConfig, "lambda_border_kl")
    lambda_l2_feature: _from(DistillConfig, "lambda_l2_feature")
    lambda_cwd: _from(DistillConfig, "lambda_cwd")
    cwd_tau: _from(DistillConfig, "cwd_tau")
    lambda_lad: _from(DistillConfig, "lambda_lad")
    feature_level: _from(DistillConfig, "feature_level")
    teacher_online: _from(DistillConfig, "teacher_online")
    # evaluation / export
    eval_resize_h: int = _field(512, "height of evaluation, export and latency inputs", gt=0)
    eval_resize_w: int = _field(1024, "width of evaluation, export and latency inputs", gt=0)
    seed: _from(TrainConfig, "seed")
    # tracking / registry
    mlflow_experiment: str = _field("dakd", "MLflow experiment of the parent run and the stage runs",
                                    min_length=1)
    registered_model: str = _field("", "MLflow registered model name; empty: dakd-<source_format>-to-"
                                   "<target_format>")
    promotion_min_gain: _from(PromoteConfig, "min_gain")


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
