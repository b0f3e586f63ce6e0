"""One parameter, one place (issue 14, items 3 and 10): a pipeline parameter that sets a stage
config field is that field: same type, bounds and description (the KFP form's text and the stage
command's `--help`), so the two cannot drift; the plan passes it on by name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import annotated_types as at
import pytest
import yaml
from pydantic import Field

from dakd_core.config import MAX_LR, StrictConfig
from dakd_core.orchestration.params import PipelineParams, StageField, _from, stage_fields
from dakd_core.registry import PromoteConfig
from dakd_core.train.configs import AdaptConfig, PretrainConfig, TrainConfig
from dakd_core.train.distill_config import DistillConfig

COMMITTED = Path(__file__).resolve().parents[1] / "pipelines" / "dakd_pipeline.yaml"

# Parameter -> the stage config field it is. Written out, so that a parameter that stops being
# its stage field (declared again with its own text and bounds) fails here.
MIRRORS = {
    "optimizer": (TrainConfig, "optimizer"), "lr": (TrainConfig, "lr"), "eval_every": (TrainConfig, "eval_every"),
    "num_workers": (TrainConfig, "num_workers"), "seed": (TrainConfig, "seed"),
    "adaptation_method": (AdaptConfig, "method"), "lambda_adv_main": (AdaptConfig, "lambda_adv_main"),
    "lambda_adv_aux": (AdaptConfig, "lambda_adv_aux"), "discriminator_width": (AdaptConfig, "d_ndf"),
    "discriminator_input_scale": (AdaptConfig, "d_input_scale"),
    "distill_adversarial_method": (DistillConfig, "method"), "promotion_min_gain": (PromoteConfig, "min_gain"),
    **{name: (DistillConfig, name) for name in (
        "paradigm", "lambda_kl", "lambda_kl_aux", "lambda_mse", "lambda_pseudo", "lambda_target", "temperature",
        "kl_reduction", "seg_loss", "focal_gamma", "lambda_border_kl", "lambda_l2_feature", "lambda_cwd", "cwd_tau",
        "lambda_lad", "feature_level", "teacher_online")},
}
# Parameter -> (stage config, field, its side of an (H, W) size or "", the note naming the part):
# parameters that are one part of a stage field (per network, per stage, H or W).
SPLITS = {
    "source_resize_h": (TrainConfig, "source_resize", "height", ""),
    "source_resize_w": (TrainConfig, "source_resize", "width", ""),
    "target_resize_h": (AdaptConfig, "target_resize", "height", ""),
    "target_resize_w": (AdaptConfig, "target_resize", "width", ""),
    "crop_h": (TrainConfig, "crop", "height", ""), "crop_w": (TrainConfig, "crop", "width", ""),
    "pretrain_iterations": (PretrainConfig, "iterations", "", "source-only pretraining of each network"),
    "adapt_iterations": (AdaptConfig, "iterations", "", "adaptation of each network"),
    "distill_iterations": (DistillConfig, "iterations", "", "distillation (paradigm d: each of its stages, c then d)"),
    "teacher_batch_size": (TrainConfig, "batch_size", "", "the teacher's (pretrain, adapt)"),
    "student_batch_size": (TrainConfig, "batch_size", "", "the student's (pretrain, adapt, distill)"),
}
# Their defaults, as they were before they took their text from the stage fields.
SPLIT_DEFAULTS = {"source_resize_h": 720, "source_resize_w": 1280, "target_resize_h": 512, "target_resize_w": 1024,
                  "crop_h": 512, "crop_w": 1024, "pretrain_iterations": 20_000, "adapt_iterations": 100_000,
                  "distill_iterations": 100_000, "teacher_batch_size": 1, "student_batch_size": 1}
# Where the pipeline's default differs from the stage field's (the paper networks' run; a form
# field always has a value, so lambda_kl_aux states DAKD's lambda_kl / 10), and the parameters
# whose value "network" / 0 leaves the field to the network's recipe.
PIPELINE_DEFAULTS = {"paradigm": "d", "eval_every": 2000, "lambda_kl_aux": 0.01, "optimizer": "network", "lr": 0.0}
RECIPE_NOTES = {"optimizer": "network: the network's own recipe", "lr": "0: the network's recipe"}


def _constraints(info) -> list:
    return [m for m in info.metadata if not isinstance(m, StageField)]


def test_each_mirrored_parameter_is_its_stage_field():
    sources = stage_fields()
    assert {name: (s.config, s.field) for name, s in sources.items()} == \
        {**MIRRORS, **{name: (config, field) for name, (config, field, _, _) in SPLITS.items()}}
    params = PipelineParams.model_fields
    for name, (config, field) in MIRRORS.items():
        stage, param = config.model_fields[field], params[name]
        assert stage.description, f"{config.__name__}.{field}: the form shows its description"
        assert param.default == PIPELINE_DEFAULTS.get(name, stage.default), name
        if name in RECIPE_NOTES:
            assert param.description.startswith(f"{stage.description}; {RECIPE_NOTES[name]}"), name
            continue
        if name == "eval_every":  # the pipeline sets no select_manifest: eval_every is its checkpoint interval
            assert param.description == f"{stage.description}; the pipeline sets no select_manifest: there, " \
                                         "the checkpoint interval"
        else:
            assert param.description == stage.description, name
        assert _constraints(param) == stage.metadata, name
        assert param.annotation == (float if name == "lambda_kl_aux" else stage.annotation), name
    # the recipe parameters: the stage's choices plus "network", its upper bound with 0 let in
    assert params["optimizer"].annotation == Literal["network", "sgd", "adamw"]
    assert TrainConfig.model_fields["lr"].metadata == [at.Gt(0), at.Le(MAX_LR)]
    assert _constraints(params["lr"]) == [at.Ge(0), at.Le(MAX_LR)]


def test_mirrored_parameters_keep_their_stage_bounds():
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.params import load_params

    for bad in ({"temperature": 0.0}, {"lambda_kl": -0.1}, {"lr": 11.0}, {"lr": -1.0}, {"feature_level": ""},
                {"discriminator_width": 0}, {"promotion_min_gain": -0.01}, {"seg_loss": "focal"},
                {"optimizer": "adam"}, {"adaptation_method": "adaptseg"}, {"distill_adversarial_method": "road"}):
        (name,) = bad
        with pytest.raises(ConfigError, match=f"field '{name}'"):
            load_params(None, **bad)
    assert load_params(None, lr=0.0, optimizer="network").lr == 0.0  # the recipe's "unset"


def test_compiled_form_shows_the_stage_fields_descriptions_and_choices():
    pipeline = next(yaml.safe_load_all(COMMITTED.read_text()))
    form = pipeline["root"]["inputDefinitions"]["parameters"]
    expected_choices = {"adaptation_method": "adaptsegnet, advent, road, diga, sfda",
                        "distill_adversarial_method": "adaptsegnet, advent", "paradigm": "a, b, c, d",
                        "kl_reduction": "class_mean, class_sum", "seg_loss": "ce, border_focal",
                        "optimizer": "network, sgd, adamw"}
    for name, source in stage_fields().items():
        text = PipelineParams.model_fields[name].description
        assert text.startswith(source.config.model_fields[source.field].description), name
        choices = f" (one of: {expected_choices[name]})" if name in expected_choices else ""
        assert form[name]["description"] == text + choices, name
        assert form[name]["defaultValue"] == getattr(PipelineParams(), name), name
    # the form has no `metric`: the text names the promotion metric the pipeline compares
    assert form["promotion_min_gain"]["description"].startswith(
        "smallest gain over the champion in the promotion metric (mIoU as a fraction unless another is named; the "
        "pipeline: mIoU on the target validation split)")
    assert "`metric`" not in form["promotion_min_gain"]["description"]
    for name, (config, field, side, note) in SPLITS.items():
        part = "; ".join(p for p in (f"its {side}" if side else "", note) if p)
        assert form[name]["description"] == f"{config.model_fields[field].description}; {part}", name
    assert form["teacher_batch_size"]["description"] == \
        TrainConfig.model_fields["batch_size"].description + "; the teacher's (pretrain, adapt)"
    assert form["crop_h"]["description"] == "size (H, W) of the random training crop; its height"


def test_split_parameters_are_one_part_of_their_stage_field():
    """A per-network, per-stage or H/W parameter is one part of its stage field: the field's text
    plus the note naming the part, the field's bounds (of one side, for a size), defaults as before."""
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.params import load_params

    params = PipelineParams.model_fields
    for name, (config, field, side, note) in SPLITS.items():
        stage, param = config.model_fields[field], params[name]
        source = stage_fields()[name]
        assert (source.side, source.note) == (side, note), name
        assert param.description == "; ".join(p for p in (stage.description, side and f"its {side}", note) if p)
        assert param.default == SPLIT_DEFAULTS[name], name
        assert param.annotation is int, name
        # a size's side: > 0 (the training configs' size validator); a whole field: its own bounds
        assert _constraints(param) == ([at.Gt(0)] if side else stage.metadata), name
        if side:
            assert param.default == stage.default[("height", "width").index(side)], name
        with pytest.raises(ConfigError, match=f"field '{name}'"):
            load_params(None, **{name: 0})
    # a side of an HW field takes the element's own bounds; a bad side is refused
    from dakd_core.config import HW

    class Eval(StrictConfig):
        size: HW = Field((4, 8), description="input size (H, W)")

    assert _constraints(PipelineParams.model_fields["crop_w"]) == [at.Gt(0)]
    with pytest.raises(TypeError, match="side 'depth' of Eval.size: one of height, width"):
        _from(Eval, "size", side="depth")
    width = _from(Eval, "size", side="width", note="n")
    bound, field, source = width.__metadata__
    assert (width.__origin__, bound, field.default) == (int, at.Gt(0), 8)
    assert field.description == source.description == "input size (H, W); its width; n"


def test_plan_maps_each_split_parameter_to_its_stage_field():
    """plan.py maps the split parameters explicitly: each one reaches the stages it names, the
    other network's or stage's value stays apart."""
    from dakd_core.orchestration.plan import TRAINING_STAGES, build_plan

    values = {name: SPLIT_DEFAULTS[name] + 3 + i for i, name in enumerate(SPLITS)}
    plan = build_plan(PipelineParams(**values))
    reaches = {
        "pretrain_iterations": ("pretrain_teacher", "pretrain_student"),
        "adapt_iterations": ("adapt_teacher", "adapt_student"),
        "distill_iterations": ("distill_first", "distill_second"),
        "teacher_batch_size": ("pretrain_teacher", "adapt_teacher"),
        "student_batch_size": ("pretrain_student", "adapt_student", "distill_first", "distill_second"),
        "source_resize_h": TRAINING_STAGES, "source_resize_w": TRAINING_STAGES,
        "crop_h": TRAINING_STAGES, "crop_w": TRAINING_STAGES,
        "target_resize_h": TRAINING_STAGES[2:], "target_resize_w": TRAINING_STAGES[2:],
    }
    assert set(reaches) == set(SPLITS)
    for name, stages in reaches.items():
        _, field, side, _ = SPLITS[name]
        for stage in stages:
            value = plan[stage][field]
            assert (value[("height", "width").index(side)] if side else value) == values[name], (name, stage)
    for stage in TRAINING_STAGES:
        assert not {"teacher_batch_size", "crop_h", "pretrain_iterations"} & set(plan[stage]), stage
    # the teacher's stages never see the student's batch, nor pretrain the adapt budget
    assert plan["pretrain_teacher"]["batch_size"] == values["teacher_batch_size"] != values["student_batch_size"]
    assert plan["pretrain_student"]["iterations"] == values["pretrain_iterations"] != values["adapt_iterations"]


def test_stage_commands_help_prints_the_text_the_form_shows(capsys, monkeypatch):
    from dakd_core.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100000")  # one line per flag: no wrapping inside a description
    for command, config in (("pretrain", PretrainConfig), ("adapt", AdaptConfig), ("distill", DistillConfig),
                            ("promote", PromoteConfig)):
        with pytest.raises(SystemExit):
            build_parser([command, "--help"]).parse_args([command, "--help"])
        text = capsys.readouterr().out
        shown = [s.field for s in stage_fields().values() if issubclass(config, s.config)]
        assert shown, command
        for field in shown:
            assert config.model_fields[field].description in text, (command, field)


def test_a_stage_field_without_description_cannot_become_a_parameter():
    class Stage(StrictConfig):
        weight: float = Field(1.0, ge=0)

    with pytest.raises(TypeError, match="Stage.weight has no description"):
        _from(Stage, "weight")


def test_plan_passes_same_named_parameters_to_every_stage_with_that_field():
    from dakd_core.orchestration.plan import build_plan

    plan = build_plan(PipelineParams(seed=7, num_workers=0, eval_every=10, lambda_adv_main=0.5, cwd_tau=2.0,
                                     lambda_kl_aux=0.05, lr=0.01))
    training = ("pretrain_teacher", "pretrain_student", "adapt_teacher", "adapt_student", "distill_first",
                "distill_second")
    for stage in training:
        assert (plan[stage]["seed"], plan[stage]["num_workers"], plan[stage]["lr"]) == (7, 0, 0.01), stage
        assert (plan[stage]["eval_every"], plan[stage]["checkpoint_every"]) == (10, 10), stage
    adversarial = training[2:]
    assert all(plan[s]["lambda_adv_main"] == 0.5 for s in adversarial)
    assert not any("lambda_adv_main" in plan[s] for s in training[:2])  # PretrainConfig has no such field
    assert [s for s in plan if "cwd_tau" in plan[s]] == ["distill_first", "distill_second"]
    assert plan["distill_first"]["lambda_kl_aux"] == 0.05
    assert plan["distill_first"]["paradigm"] == "c" and plan["distill_second"]["paradigm"] == "d"
