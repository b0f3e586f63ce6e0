"""Pipeline parameters -> every stage's config, built once by the `start` task.

The one mapping from the KFP form (PipelineParams) to the stage config models (PretrainConfig,
AdaptConfig, DistillConfig, ExportConfig, EvalConfig, RegisterConfig, PromoteConfig). Each stage's
settings travel to its task as one JSON string; the task adds only what upstream tasks produce
(manifests, checkpoints, the cache index) and its output folder. Adding a stage setting is then
adding its config field and, if it is a UI parameter, one `_from` line in PipelineParams (the
pipeline's signature is generated from it): a parameter that is a whole field reaches every stage
whose config has that field without a line here; no component or task signature lists it.

`check_plan` builds every stage's config from the plan with placeholders for the upstream outputs,
so a bad value fails in the first (CPU) task, in seconds, naming the field, not in the distill task
after hours of pretraining and adaptation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dakd_core.errors import ConfigError, DataError
from dakd_core.orchestration.params import AUTO, NONE, PipelineParams, from_form, stage_fields
from dakd_core.train.configs import AdaptConfig, PretrainConfig
from dakd_core.train.distill_config import DistillConfig

# The stages whose settings the plan holds, in pipeline order (start's outputs, one JSON each).
STAGES = ("pretrain_teacher", "pretrain_student", "adapt_teacher", "adapt_student", "cache_teacher",
          "distill_first", "distill_second", "export", "evaluate", "register", "promote")
# The training stages' settings also hold how many processes run them (dakd_core/orchestration/
# launch.py run_stage: torchrun when > 1); the task takes it out before building the stage config.
LAUNCH_FIELD = "gpus_per_task"
ROLES = ("teacher", "student")
TRAINING_STAGES = ("pretrain_teacher", "pretrain_student", "adapt_teacher", "adapt_student", "distill_first",
                   "distill_second")
# Where `check_plan` stands in for a value an upstream task produces.
_UPSTREAM = "upstream://{}"


def _hw(h: int, w: int) -> list[int]:
    return [h, w]


def _whole_fields(p: PipelineParams, config: type) -> dict:
    """The parameters that are whole fields of `config` (PipelineParams `_from`, not `split`), under
    the field's name; one at its `unset` word ("recipe", "auto") is left out, so the stage takes
    the field's own default (the network's recipe, dakd_core/train/recipes.py; lambda_kl / 10)."""
    return {source.field: getattr(p, name) for name, source in stage_fields().items()
            if not source.split and issubclass(config, source.config) and getattr(p, name) != source.unset}


def _training(p: PipelineParams, role: str, iterations: int, config: type) -> dict:
    """TrainConfig fields of one network's training stage: the same-named parameters plus what
    the form splits per network, per stage or into H and W."""
    return dict(_whole_fields(p, config), model=getattr(p, f"{role}_model"),
                source_resize=_hw(p.train_source_resize_h, p.train_source_resize_w),
                crop=_hw(p.train_crop_h, p.train_crop_w), batch_size=getattr(p, f"{role}_batch_size"),
                iterations=iterations, checkpoint_every=p.train_eval_every, **{LAUNCH_FIELD: p.train_gpus_per_task})


def _adversarial(p: PipelineParams, method: str) -> dict:
    """AdaptConfig fields that are split per stage (the method) or into H and W."""
    return dict(target_resize=_hw(p.train_target_resize_h, p.train_target_resize_w), method=method)


def _distill(p: PipelineParams, paradigm: str) -> dict:
    return {**_training(p, "student", p.distill_iterations, DistillConfig),
            **_adversarial(p, p.distill_adversarial_method), "paradigm": paradigm}


def _weights(p: PipelineParams, role: str) -> str | None:
    """A network's initial backbone weights; None for "none" (from scratch)."""
    weights = getattr(p, f"{role}_weights")
    return None if weights == NONE else weights


def check_road_weights(p: PipelineParams) -> None:
    """ROAD's reference model z is the network built with ImageNet backbone weights (AdaptConfig
    road_reference 'imagenet', which the pipeline keeps): under adaptation_method road both
    networks need them. Checked on the parameters, so the error names the form's fields."""
    missing = [f"'{role}_weights'" for role in ROLES if not _weights(p, role)]
    if p.adapt_method == "road" and missing:
        raise ConfigError(f"field {' and '.join(missing)}: adapt_method 'road' needs the ImageNet backbone "
                          "weights of both networks (ROAD's reference model, road_reference 'imagenet', is the "
                          "network built with them): a store URI of a state dict or timm:TAG")


def build_plan(p: PipelineParams) -> dict[str, dict]:
    """Every stage's settings from the parameters (paradigm d: distill c first, then d from it;
    other paradigms: one distill stage, `distill_second` empty and never run)."""
    plan: dict[str, dict] = {}
    for role in ROLES:
        pretrain = _training(p, role, p.pretrain_iterations, PretrainConfig)
        adapt = {**_training(p, role, p.adapt_iterations, AdaptConfig), **_adversarial(p, p.adapt_method)}
        weights = _weights(p, role)
        if weights:
            pretrain["backbone_weights"] = weights
            if p.adapt_method == "road":  # the reference model (check_road_weights); others start from init
                adapt["backbone_weights"] = weights
        plan[f"pretrain_{role}"], plan[f"adapt_{role}"] = pretrain, adapt
    plan["distill_first"] = _distill(p, "c" if p.distill_paradigm == "d" else p.distill_paradigm)
    # The teacher is cached at the resizes the distill stage gives the student's source and target
    # streams (in the cache's manifest order: source train, target train), so every cached map is
    # computed at the geometry it is used at.
    plan["cache_teacher"] = {"sizes": [plan["distill_first"]["source_resize"],
                                       plan["distill_first"]["target_resize"]]}
    plan["distill_second"] = _distill(p, "d") if p.distill_paradigm == "d" else {}
    resolution = _hw(p.eval_resize_h, p.eval_resize_w)
    plan["export"] = {"resolution": resolution}
    plan["evaluate"] = {"resolution": resolution, "table_classes": p.eval_table_classes}
    registered = p.mlflow_registered_model
    plan["register"] = dict(source=p.data_source_format, target=p.data_target_format,
                            name=None if registered == AUTO else registered, paradigm=p.distill_paradigm,
                            teacher=p.teacher_model)
    plan["promote"] = {"min_gain": p.mlflow_promotion_min_gain}
    return {stage: plan[stage] for stage in STAGES}


def _config_classes() -> dict[str, tuple[type, dict]]:
    """Stage -> (config model, placeholders for what upstream tasks produce)."""
    from dakd_core.cache import CacheConfig
    from dakd_core.evaluation.evaluate import EvalConfig
    from dakd_core.export import ExportConfig
    from dakd_core.registry import PromoteConfig, RegisterConfig

    up = {k: _UPSTREAM.format(k) for k in ("source_manifest", "target_manifest", "init", "teacher", "teacher_cache",
                                           "out", "model", "manifest", "export", "metrics", "name")}
    train = {k: up[k] for k in ("source_manifest", "out")}
    adapt = {**train, **{k: up[k] for k in ("target_manifest", "init")}}
    return {
        "pretrain_teacher": (PretrainConfig, train), "pretrain_student": (PretrainConfig, train),
        "adapt_teacher": (AdaptConfig, adapt), "adapt_student": (AdaptConfig, adapt),
        "cache_teacher": (CacheConfig, {"teacher": up["teacher"], "manifests": [up["source_manifest"],
                                                                     up["target_manifest"]],
                                        "store": up["out"], "name": "check"}),
        "distill_first": (DistillConfig, {**adapt, "teacher": up["teacher"], "teacher_cache": up["teacher_cache"]}),
        "distill_second": (DistillConfig, {**adapt, "teacher": up["teacher"], "teacher_cache": up["teacher_cache"]}),
        "export": (ExportConfig, {"model": up["model"], "out": up["out"]}),
        "evaluate": (EvalConfig, {"models": [up["model"]], "manifest": up["manifest"], "out": up["out"]}),
        "register": (RegisterConfig, {"export": up["export"], "metrics": up["metrics"]}),
        "promote": (PromoteConfig, {"name": up["name"]}),
    }


def stage_settings(settings: dict) -> tuple[dict, int]:
    """A stage's settings without the launch field, and the number of processes to run it in."""
    settings = dict(settings)
    return settings, int(settings.pop(LAUNCH_FIELD, 1))


def check_plan(plan: dict[str, dict]) -> None:
    """Build every stage's config model from the plan (upstream outputs as placeholders): a
    ConfigError names the stage and the field."""
    from dakd_core.config import build_config

    for stage, (cls, upstream) in _config_classes().items():
        if not plan[stage]:
            continue  # distill_second of paradigms a-c: never run
        try:
            build_config(cls, **{**stage_settings(plan[stage])[0], **upstream})
        except ConfigError as e:
            raise ConfigError(f"stage {stage}: {e}") from None


def check_dataset_root(field: str, uri: str) -> None:
    """The dataset root exists and is not empty: a directory (plain path or file://) or an
    s3:// prefix. pvc:// roots are only mounted into the ingest task, which checks them there."""
    from dakd_core.errors import StoreError
    from dakd_core.storage import open_store

    if uri.startswith("pvc://"):
        return
    if uri.startswith("s3://"):
        try:
            found = bool(open_store(uri.rstrip("/")).list())
        except StoreError as e:
            raise DataError(f"{field}: {uri} cannot be listed: {e}") from None
        if not found:
            raise DataError(f"{field}: no object under {uri}")
        return
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"{field}: {uri} is not a dataset root (use s3://bucket/prefix, pvc://claim/path "
                          "or a directory)")
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not path.is_dir():
        raise DataError(f"{field}: {uri} is not a directory")
    with os.scandir(path) as entries:
        if next(entries, None) is None:
            raise DataError(f"{field}: {uri} is an empty directory")


def checked_plan(p: PipelineParams) -> dict[str, dict]:
    """Every check `start` makes short of finding the datasets: the dataset formats, the ROAD
    weights, every stage's config built from the plan. Returns the plan."""
    from dakd_core.labels import FORMATS

    for field in ("data_source_format", "data_target_format"):
        if getattr(p, field) not in FORMATS:
            raise ConfigError(f"field '{field}': unknown dataset format {getattr(p, field)!r} "
                              f"(known: {', '.join(FORMATS)})")
    check_road_weights(p)
    plan = build_plan(p)
    check_plan(plan)
    return plan


def plan_run(params: dict) -> tuple[PipelineParams, dict[str, str]]:
    """What `start` checks and hands on: the parameters validated (naming the field), every stage's
    config built, the dataset roots found; returns the parameters and stage -> config JSON (keys
    sorted, so equal settings give equal strings and KFP's cache keys match)."""
    from dakd_core.config import build_config

    p = build_config(PipelineParams, **from_form(params))
    plan = checked_plan(p)
    check_dataset_root("data_source_uri", p.data_source_uri)
    check_dataset_root("data_target_uri", p.data_target_uri)
    return p, {stage: json.dumps(settings, sort_keys=True) for stage, settings in plan.items()}
