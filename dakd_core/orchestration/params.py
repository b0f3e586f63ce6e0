"""Pipeline parameters: one strict model, the single source of the defaults and of the KFP form.

`pipelines/dakd_pipeline.py` takes its signature (names, types, defaults) and its description from
`PipelineParams`, `dakd run` reads `RunConfig` (pipeline parameters plus local settings) from YAML,
and `dakd submit --config` checks its file against `PipelineParams`, so a typo in a parameter name
is an error naming the field before anything runs.

One parameter, one place: a parameter that sets a stage config field is declared with `_from`,
which takes the field's type, bounds, description and default from the stage config (the text
`dakd <stage> --help` prints too) and records which field it is: the one mapping from a form name
to a config field (the stage field keeps its own name). dakd_core/orchestration/plan.py passes a
whole-field parameter to every stage whose config has that field; a parameter that is one part of
a field (`split`: the teacher's or the student's batch size, one stage's iterations or method, the
height or width of a size: `side`) takes the field's text with a note naming the part, and plan.py
maps each of those explicitly. Only what is no stage field (datasets, store and tracking names,
networks, GPUs) and the evaluation size (its ExportConfig / EvalConfig fields live in modules that
import torch, which `dakd compile` must not) is declared here with its own text.

The form (issue 32). The KFP UI lists a run's parameters alphabetically as `<name> - <type>` boxes
holding their defaults, and shows no parameter description. Hence:
- every name starts with its group (`GROUPS`), so sorting keeps each group together;
- a value that means "not set" is a word (`WORDS`: recipe, auto, none), never 0 or an empty box;
- a run's name is KFP's own run name (or `dakd run --run-name`), not a parameter;
- the guide (`form_guide`: groups, defaults, choices, words) is the pipeline's and its versions'
  description, which the UI shows in its summary panel.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types
from pydantic import Field, model_validator

from dakd_core.config import StrictConfig, build_config, without_none
from dakd_core.registry import PromoteConfig
from dakd_core.train.configs import AdaptConfig, PretrainConfig, TrainConfig
from dakd_core.train.distill_config import DistillConfig

RUN_NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"
_STAGE_DEFAULT = object()  # `_from` without `default`: the stage field's
SIDES = ("height", "width")  # the parts of an (H, W) size field, in its order

# Group prefix -> what its parameters set, in pipeline order (the guide's order). Every parameter's
# name is `<group>_<rest>` (tests/test_params.py checks it).
GROUPS = {
    "data": "the datasets (layout and root of each domain) and the store every stage writes under",
    "teacher": "the teacher network: architecture, initial backbone weights, batch size",
    "student": "the student network: architecture, initial backbone weights, batch size",
    "train": "every training stage (pretrain, adapt, distill): image sizes, recipe, seed, checkpoints, GPUs",
    "pretrain": "source-only pretraining of both networks",
    "adapt": "unsupervised domain adaptation of both networks; the adversarial weights and discriminator "
             "also serve the distillation's output-space alignment",
    "distill": "DAKD distillation of the adapted student from the adapted teacher",
    "eval": "export, evaluation and latency of every model",
    "mlflow": "tracking, model registry and promotion",
}
# Words a parameter takes in place of a value; each parameter's description says what it means there.
RECIPE, AUTO, NONE = "recipe", "auto", "none"
WORDS = {
    RECIPE: "the network's own training recipe (dakd_core/train/recipes.py: the paper's SGD for the DeepLab "
            "networks, AdamW + cosine for the CPU-scale ones)",
    AUTO: "derived from the other parameters (as the parameter's description says)",
    NONE: "nothing: the backbone starts from random initialisation",
}


def _field(default, description: str, **constraints):
    """A pipeline parameter: its default, its one description (CLI help, KFP form, docs), its bounds."""
    return Field(default, description=description, **constraints)


@dataclass(frozen=True)
class StageField:
    """The stage config field a pipeline parameter is (`_from`), kept in the parameter's metadata.

    `unset`: the parameter's word that leaves the field unset, so the stage takes its own default
    (the network's recipe, lambda_kl / 10); None: every value is passed on. `side`: the part of an
    (H, W) size field the parameter is ("height" or "width"). `split`: the parameter is one part
    of the field (per network, per stage, a side), which plan.py maps; otherwise plan.py passes it
    whole to every stage whose config has the field. `note`: what the pipeline adds to the field's
    description (after "its <side>")."""

    config: type[StrictConfig]
    field: str
    unset: str | None = None
    note: str = ""
    side: str = ""
    split: bool = False

    @property
    def description(self) -> str:
        parts = (self.config.model_fields[self.field].description, self.side and f"its {self.side}", self.note)
        return "; ".join(part for part in parts if part)


def _side(annotation, index: int) -> tuple[type, list]:
    """Type and bounds of one side of an (H, W) size annotation: the element's own (HW's
    PositiveInt), else > 0, what the training configs' size validators check."""
    element = typing.get_args(annotation)[index]
    if typing.get_origin(element) is Annotated:
        base, *bounds = typing.get_args(element)
        return base, bounds
    return element, [annotated_types.Gt(0)]


def _from(config: type[StrictConfig], field: str, *, default=_STAGE_DEFAULT, unset: str | None = None,
          note: str = "", side: str = "", split: bool = False):
    """The type of a parameter that is the stage config field `config.field`: its annotation (a
    form field has a value: `T | None` is T), bounds and description, and its default unless the
    pipeline's differs (`default`). With `unset` (a word of WORDS), the default is that word: one
    more choice of a Literal, or the word or a number within the field's bounds. With `side`
    ("height" / "width"), the parameter is that side of a size field: the side's type, bounds and
    default. Used as the annotation: `distill_lambda_kl: _from(DistillConfig, "lambda_kl")`,
    `train_crop_h: _from(TrainConfig, "crop", side="height")`."""
    info = config.model_fields[field]
    if not info.description:
        raise TypeError(f"{config.__name__}.{field} has no description: the pipeline form shows it")
    if side and side not in SIDES:
        raise TypeError(f"side {side!r} of {config.__name__}.{field}: one of {', '.join(SIDES)}")
    if unset is not None and unset not in WORDS:
        raise TypeError(f"unset {unset!r} of {config.__name__}.{field}: one of {', '.join(WORDS)}")
    source = StageField(config, field, unset, note, side, split or bool(side))
    annotation = without_none(info.annotation)
    bounds = list(info.metadata)
    if side:
        annotation, bounds = _side(annotation, SIDES.index(side))
    if unset is not None:
        default = unset
        if typing.get_origin(annotation) is Literal:
            annotation = Literal[(unset, *typing.get_args(annotation))]
        else:  # a number or the word: the bounds hold for the number
            annotation, bounds = Literal[unset] | Annotated[(annotation, *bounds)], []
    elif default is _STAGE_DEFAULT:
        default = info.default[SIDES.index(side)] if side else info.default
    return Annotated[(annotation, *bounds, Field(default, description=source.description), source)]


def stage_fields() -> dict[str, StageField]:
    """Parameter name -> the stage config field it is, for the parameters declared with `_from`."""
    return {name: meta for name, info in PipelineParams.model_fields.items() for meta in info.metadata
            if isinstance(meta, StageField)}


class PipelineParams(StrictConfig):
    """The parameters of one pipeline run, as the KFP UI form shows them (descriptions included)."""

    # data: dataset layout + root URI of each domain (dakd_core.data.formats), the store
    data_source_format: str = _field("gta5", "dataset layout of the labelled source domain (a dakd_core.data.formats "
                                     "name, e.g. gta5, synthia, bdd100k, cityscapes)", min_length=1)
    data_source_uri: str = _field("s3://dakd/raw/gta5", "root of the source dataset: s3://bucket/prefix, "
                                  "pvc://claim/path or a directory", min_length=1)
    data_target_format: str = _field("cityscapes", "dataset layout of the unlabelled target domain (its val split "
                                     "is labelled and used for evaluation; acdc: per-condition tables too)",
                                     min_length=1)
    data_target_uri: str = _field("s3://dakd/raw/cityscapes", "root of the target dataset: s3://bucket/prefix, "
                                  "pvc://claim/path or a directory", min_length=1)
    data_store_uri: str = _field("s3://dakd/store", "store root every stage writes under: datasets/, stages/ "
                                 "(content-addressed stage outputs, shared by runs) and runs/<run name>/",
                                 min_length=1)
    # networks
    teacher_model: str = _field("deeplabv2_resnet101", "teacher network (dakd_core.models registry name)",
                                min_length=1)
    teacher_weights: str = _field(NONE, "initial backbone weights of the teacher: a store URI of a state dict or "
                                  "timm:TAG (ImageNet, e.g. timm:resnet101.tv_in1k); none: from scratch",
                                  min_length=1)
    teacher_batch_size: _from(TrainConfig, "batch_size", split=True, note="the teacher's (pretrain, adapt)")
    student_model: str = _field("deeplabv2_resnet18", "student network (dakd_core.models registry name)",
                                min_length=1)
    student_weights: str = _field(NONE, "initial backbone weights of the student: a store URI of a state dict or "
                                  "timm:TAG (ImageNet, e.g. timm:resnet18.tv_in1k); none: from scratch",
                                  min_length=1)
    student_batch_size: _from(TrainConfig, "batch_size", split=True, note="the student's (pretrain, adapt, "
                              "distill)")
    # every training stage: resolution (H, W), the segmenter's recipe (recipe: each network's own,
    # dakd_core/train/recipes.py), checkpoints, seed, GPUs
    train_source_resize_h: _from(TrainConfig, "source_resize", side="height")
    train_source_resize_w: _from(TrainConfig, "source_resize", side="width")
    train_target_resize_h: _from(AdaptConfig, "target_resize", side="height")
    train_target_resize_w: _from(AdaptConfig, "target_resize", side="width")
    train_crop_h: _from(TrainConfig, "crop", side="height")
    train_crop_w: _from(TrainConfig, "crop", side="width")
    train_optimizer: _from(TrainConfig, "optimizer", unset=RECIPE, note="recipe: the network's own (the paper's "
                           "SGD for DeepLab, AdamW + cosine for the CPU-scale networks)")
    train_lr: _from(TrainConfig, "lr", unset=RECIPE, note="recipe: the network's own")
    train_eval_every: _from(TrainConfig, "eval_every", default=2000, note="the pipeline sets no select_manifest: "
                            "there, the checkpoint interval")
    train_num_workers: _from(TrainConfig, "num_workers")
    train_seed: _from(TrainConfig, "seed")
    train_gpus_per_task: int = _field(1, "GPUs of each training task (its accelerator limit); N > 1 runs the stage "
                                      "as N torchrun processes, each with its own batch", ge=1)
    # source-only pretraining
    pretrain_iterations: _from(PretrainConfig, "iterations", default=20_000, split=True, note="source-only "
                               "pretraining of each network")
    # adaptation of teacher and student before distillation
    adapt_method: _from(AdaptConfig, "method", split=True)
    adapt_iterations: _from(AdaptConfig, "iterations", default=100_000, split=True, note="adaptation of each "
                            "network")
    adapt_lambda_adv_main: _from(AdaptConfig, "lambda_adv_main")
    adapt_lambda_adv_aux: _from(AdaptConfig, "lambda_adv_aux")
    # On CPU a 64-wide D costs more than a small student.
    adapt_discriminator_width: _from(AdaptConfig, "d_ndf")
    adapt_discriminator_input_scale: _from(AdaptConfig, "d_input_scale")
    # distillation (DAKD); it keeps an output-space alignment whatever method adapted the networks
    distill_paradigm: _from(DistillConfig, "paradigm", default="d")
    distill_iterations: _from(DistillConfig, "iterations", default=100_000, split=True, note="distillation "
                              "(paradigm d: each of its stages, c then d)")
    distill_adversarial_method: _from(DistillConfig, "method", split=True)
    distill_lambda_kl: _from(DistillConfig, "lambda_kl")
    distill_lambda_kl_aux: _from(DistillConfig, "lambda_kl_aux", unset=AUTO, note="auto: lambda_kl / 10")
    distill_lambda_mse: _from(DistillConfig, "lambda_mse")
    distill_lambda_pseudo: _from(DistillConfig, "lambda_pseudo")
    distill_lambda_target: _from(DistillConfig, "lambda_target")
    distill_temperature: _from(DistillConfig, "temperature")
    distill_kl_reduction: _from(DistillConfig, "kl_reduction")
    distill_teacher_online: _from(DistillConfig, "teacher_online")
    # real-time students (issue 9)
    distill_seg_loss: _from(DistillConfig, "seg_loss")
    distill_focal_gamma: _from(DistillConfig, "focal_gamma")
    distill_lambda_border_kl: _from(DistillConfig, "lambda_border_kl")
    distill_lambda_l2_feature: _from(DistillConfig, "lambda_l2_feature")
    distill_lambda_cwd: _from(DistillConfig, "lambda_cwd")
    distill_cwd_tau: _from(DistillConfig, "cwd_tau")
    distill_lambda_lad: _from(DistillConfig, "lambda_lad")
    distill_feature_level: _from(DistillConfig, "feature_level")
    # evaluation / export
    eval_resize_h: int = _field(512, "height of evaluation, export and latency inputs", gt=0)
    eval_resize_w: int = _field(1024, "width of evaluation, export and latency inputs", gt=0)
    eval_table_classes: Literal[19, 16, 13] = _field(19, "classes of the results table's mIoU and columns: 19, or "
                                                     "the 16 / 13 of the SYNTHIA protocol (metrics.json always holds "
                                                     "all three)")
    # tracking / registry
    mlflow_experiment: str = _field("dakd", "MLflow experiment of the parent run and the stage runs",
                                    min_length=1)
    mlflow_registered_model: str = _field(AUTO, "MLflow registered model name; auto: dakd-<data_source_format>-to-"
                                          "<data_target_format>", min_length=1)
    mlflow_promotion_min_gain: _from(PromoteConfig, "min_gain")

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data):
        """A name without its group (the form's names before issue 32: `lr`, `paradigm`) or the
        retired run_name: an error that says the form's name, not only "extra inputs"."""
        if not isinstance(data, dict):
            return data
        for key in data:
            if key == "run_name":
                raise ValueError("run_name is no parameter: a run is named by KFP's run name (`dakd submit "
                                 "--run-name`, the form's Run name) or `dakd run --run-name`")
            grouped = [name for name in cls.model_fields if name.endswith(f"_{key}")]
            if key not in cls.model_fields and len(grouped) == 1:
                raise ValueError(f"unknown parameter {key!r}: the parameters carry their group's prefix, "
                                 f"this one is {grouped[0]!r}")
        return data


def _choices(annotation) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def number_or_word(name: str) -> tuple[str, type] | None:
    """(word, number type) of a parameter that is a number or a word (train_lr: recipe or a
    float), else None."""
    annotation = PipelineParams.model_fields[name].annotation
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    literal, number = typing.get_args(annotation)
    if typing.get_origin(number) is Annotated:
        number = typing.get_args(number)[0]
    return typing.get_args(literal)[0], number


def form_type(name: str) -> type:
    """The type of a parameter's box in the KFP form: bool, int or float for a switch or a plain
    number (or a choice of integers); str for text, text choices and number-or-word parameters."""
    annotation = PipelineParams.model_fields[name].annotation
    choices = form_choices(name)
    if choices and all(type(c) is int for c in choices):
        return int
    return annotation if annotation in (bool, int, float) else str


def form_values(p: PipelineParams) -> dict:
    """The parameters as the form takes them (a number-or-word parameter as its text)."""
    values = p.model_dump()
    return {name: str(value) if form_type(name) is str else value for name, value in values.items()}


def from_form(values: dict) -> dict:
    """The parameters as their PipelineParams types, from the form's values. KFP substitutes each
    parameter into a dict input as text, integers as floats ('512.0', 'true'); a number-or-word
    parameter arrives as its text ('recipe', '0.01'). A value that is not of its type is left as
    given, for the model to refuse naming the field."""
    fields = PipelineParams.model_fields
    out = {}
    for key, value in values.items():
        kind = form_type(key) if key in fields else None
        either = number_or_word(key) if key in fields else None
        if either and isinstance(value, str) and value != either[0]:
            kind = either[1]
        if isinstance(value, str) and kind in (int, float, bool):
            try:
                if kind is bool:
                    value = {"true": True, "false": False}[value.lower()]
                else:
                    number = float(value)
                    value = int(number) if kind is int and number.is_integer() else number
            except (KeyError, ValueError):
                pass
        elif kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def group_of(name: str) -> str:
    """A parameter's group: the GROUPS prefix its name starts with."""
    return next((g for g in GROUPS if name.startswith(g + "_")), "")


def form_choices(name: str) -> tuple:
    """A choice parameter's choices (its Literal's), else ()."""
    return _choices(PipelineParams.model_fields[name].annotation)


def form_description(name: str) -> str:
    """The text of a parameter in the KFP form: its description, and its choices when it has some."""
    choices = form_choices(name)
    description = PipelineParams.model_fields[name].description
    return f"{description} (one of: {', '.join(map(str, choices))})" if choices else description


def pipeline_docstring(summary: str) -> str:
    """A Google-style docstring with an "Args:" line per parameter: KFP puts each description into
    the compiled pipeline's inputDefinitions. (docstring_parser reads no Args section without a
    summary line before it.)"""
    return f"{summary}\n\nArgs:\n" + "".join(f"    {name}: {form_description(name)}\n" for name in PipelineParams.model_fields)


# Names with underscores and <placeholders> in a description: markdown reads `lambda_kl / 10, ...
# class_sum` as emphasis (the KFP UI rendered "lambdakl" in italics), so the guide quotes them.
_CODE_WORD = re.compile(r"[^\s(]*<[^>]+>[^\s),;]*|[^\s(]*_[^\s),;]*")


def markdown_text(text: str) -> str:
    """`text` for the markdown guide: each word with `_` or a <placeholder> in backticks (a trailing
    '.' or ':' stays outside), spans already in backticks as they are."""
    def quote(match: re.Match) -> str:
        word = match.group(0).rstrip(".:")
        return f"`{word}`{match.group(0)[len(word):]}"

    parts = text.split("`")
    parts[::2] = [_CODE_WORD.sub(quote, part) for part in parts[::2]]
    return "`".join(parts)


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)  # as the form's box: false


def form_guide(summary: str) -> str:
    """The parameter guide (markdown) the KFP UI shows as the pipeline's and the version's
    description, where the run form shows none: the groups in pipeline order, each parameter with
    its default, description and choices, and the words that stand for "not set"."""
    defaults = form_values(PipelineParams())
    lines = [summary, "",
             "The run form lists the parameters alphabetically; each name starts with its group, so a group's "
             "parameters stand together. Words in place of a value: "
             + "; ".join(f"`{word}`: {markdown_text(meaning)}" for word, meaning in WORDS.items()) + ".",
             "Per dataset pair, start from `configs/pairs/<pair>.yaml` (`dakd submit --config FILE`)."]
    for group, title in GROUPS.items():
        lines += ["", f"**{group}_**: {title}", ""]
        lines += [f"- `{name}` = `{_shown(defaults[name])}`: {markdown_text(form_description(name))}"
                  for name in PipelineParams.model_fields if group_of(name) == group]
    return "\n".join(lines) + "\n"


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
