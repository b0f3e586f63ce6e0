"""One parameter, one place (issue 14, items 3 and 10): a pipeline parameter that sets a stage
config field is that field: same type, bounds and description (the KFP form's text and the stage
command's `--help`), so the two cannot drift; the plan passes it on by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

import annotated_types as at
import pytest
import yaml
from pydantic import Field

from dakd_core.config import MAX_LR, StrictConfig
from dakd_core.orchestration.params import (
    GROUPS,
    WORDS,
    PipelineParams,
    StageField,
    _from,
    form_guide,
    markdown_text,
    form_values,
    from_form,
    group_of,
    stage_fields,
)
from dakd_core.registry import PromoteConfig
from dakd_core.train.configs import AdaptConfig, PretrainConfig, TrainConfig
from dakd_core.train.distill_config import DistillConfig

COMMITTED = Path(__file__).resolve().parents[1] / "pipelines" / "dakd_pipeline.yaml"

# Parameter -> the stage config field it is. Written out, so that a parameter that stops being
# its stage field (declared again with its own text and bounds) fails here.
MIRRORS = {
    **{f"train_{name}": (TrainConfig, name) for name in ("optimizer", "lr", "eval_every", "num_workers", "seed")},
    "adapt_lambda_adv_main": (AdaptConfig, "lambda_adv_main"), "adapt_lambda_adv_aux": (AdaptConfig, "lambda_adv_aux"),
    "adapt_discriminator_width": (AdaptConfig, "d_ndf"), "adapt_discriminator_input_scale": (AdaptConfig, "d_input_scale"),
    "mlflow_promotion_min_gain": (PromoteConfig, "min_gain"),
    **{f"distill_{name}": (DistillConfig, name) for name in (
        "paradigm", "lambda_kl", "lambda_kl_aux", "lambda_mse", "lambda_pseudo", "lambda_target", "temperature",
        "kl_reduction", "seg_loss", "focal_gamma", "lambda_border_kl", "lambda_l2_feature", "lambda_cwd", "cwd_tau",
        "lambda_lad", "feature_level", "teacher_online")},
}
# Parameter -> (stage config, field, its side of an (H, W) size or "", the note naming the part):
# parameters that are one part of a stage field (per network, per stage, H or W).
SPLITS = {
    "train_source_resize_h": (TrainConfig, "source_resize", "height", ""),
    "train_source_resize_w": (TrainConfig, "source_resize", "width", ""),
    "train_target_resize_h": (AdaptConfig, "target_resize", "height", ""),
    "train_target_resize_w": (AdaptConfig, "target_resize", "width", ""),
    "train_crop_h": (TrainConfig, "crop", "height", ""), "train_crop_w": (TrainConfig, "crop", "width", ""),
    "pretrain_iterations": (PretrainConfig, "iterations", "", "source-only pretraining of each network"),
    "adapt_iterations": (AdaptConfig, "iterations", "", "adaptation of each network"),
    "distill_iterations": (DistillConfig, "iterations", "", "distillation (paradigm d: each of its stages, c then d)"),
    "teacher_batch_size": (TrainConfig, "batch_size", "", "the teacher's (pretrain, adapt)"),
    "student_batch_size": (TrainConfig, "batch_size", "", "the student's (pretrain, adapt, distill)"),
}
# The method of one stage: the same field (DistillConfig is an AdaptConfig), a value per stage.
METHODS = {"adapt_method": (AdaptConfig, ("adapt_teacher", "adapt_student")),
           "distill_adversarial_method": (DistillConfig, ("distill_first", "distill_second"))}
# Their defaults, as they were before they took their text from the stage fields.
SPLIT_DEFAULTS = {"train_source_resize_h": 720, "train_source_resize_w": 1280, "train_target_resize_h": 512,
                  "train_target_resize_w": 1024, "train_crop_h": 512, "train_crop_w": 1024, "pretrain_iterations": 20_000,
                  "adapt_iterations": 100_000, "distill_iterations": 100_000, "teacher_batch_size": 1,
                  "student_batch_size": 1}
# Where the pipeline's default differs from the stage field's (the paper networks' run), and the
# parameters whose word ("recipe", "auto") leaves the field unset: the stage takes its own default.
PIPELINE_DEFAULTS = {"distill_paradigm": "d", "train_eval_every": 2000, "distill_lambda_kl_aux": "auto",
                     "train_optimizer": "recipe", "train_lr": "recipe"}
WORD_NOTES = {"train_optimizer": "recipe: the network's own", "train_lr": "recipe: the network's own",
              "distill_lambda_kl_aux": "auto: lambda_kl / 10"}


def _constraints(info) -> list:
    return [m for m in info.metadata if not isinstance(m, StageField)]


def test_each_mirrored_parameter_is_its_stage_field():
    sources = stage_fields()
    assert {name: (s.config, s.field) for name, s in sources.items()} == {
        **MIRRORS, **{name: (config, field) for name, (config, field, _, _) in SPLITS.items()},
        **{name: (config, "method") for name, (config, _) in METHODS.items()}}
    assert {name for name, s in sources.items() if s.split} == set(SPLITS) | set(METHODS)
    params = PipelineParams.model_fields
    for name, (config, field) in MIRRORS.items():
        stage, param = config.model_fields[field], params[name]
        assert stage.description, f"{config.__name__}.{field}: the form shows its description"
        assert param.default == PIPELINE_DEFAULTS.get(name, stage.default), name
        if name in WORD_NOTES:
            assert param.description == f"{stage.description}; {WORD_NOTES[name]}" or \
                param.description.startswith(f"{stage.description}; {WORD_NOTES[name]} ("), name
            continue
        if name == "train_eval_every":  # the pipeline sets no select_manifest: eval_every is its checkpoint interval
            assert param.description == f"{stage.description}; the pipeline sets no select_manifest: there, " \
                                         "the checkpoint interval"
        else:
            assert param.description == stage.description, name
        assert _constraints(param) == stage.metadata, name
        assert param.annotation == stage.annotation, name
    for name, (config, _) in METHODS.items():
        assert params[name].annotation == config.model_fields["method"].annotation, name
    # the word parameters: the stage's choices plus the word, or the word or a number in the field's bounds
    assert params["train_optimizer"].annotation == Literal["recipe", "sgd", "adamw"]
    assert TrainConfig.model_fields["lr"].metadata == [at.Gt(0), at.Le(MAX_LR)]
    word, number = get_args(params["train_lr"].annotation)
    assert word == Literal["recipe"] and get_args(number) == (float, at.Gt(0), at.Le(MAX_LR))
    word, number = get_args(params["distill_lambda_kl_aux"].annotation)
    assert word == Literal["auto"] and get_args(number) == (float, at.Ge(0))


def test_mirrored_parameters_keep_their_stage_bounds():
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.params import load_params

    for bad in ({"distill_temperature": 0.0}, {"distill_lambda_kl": -0.1}, {"train_lr": 11.0}, {"train_lr": -1.0},
                {"train_lr": 0.0}, {"train_lr": "network"}, {"distill_lambda_kl_aux": -0.5},
                {"distill_feature_level": ""}, {"adapt_discriminator_width": 0}, {"mlflow_promotion_min_gain": -0.01},
                {"distill_seg_loss": "focal"}, {"train_optimizer": "adam"}, {"adapt_method": "adaptseg"},
                {"distill_adversarial_method": "road"}, {"teacher_weights": ""}, {"mlflow_registered_model": ""}):
        (name,) = bad
        with pytest.raises(ConfigError, match=f"field '{name}"):
            load_params(None, **bad)
    words = load_params(None, train_lr="recipe", train_optimizer="recipe", distill_lambda_kl_aux="auto")
    assert (words.train_lr, words.train_optimizer, words.distill_lambda_kl_aux) == ("recipe", "recipe", "auto")
    assert load_params(None, train_lr=0.01, distill_lambda_kl_aux=0.0).train_lr == 0.01


def test_compiled_form_shows_the_stage_fields_descriptions_and_choices():
    pipeline = next(yaml.safe_load_all(COMMITTED.read_text()))
    form = pipeline["root"]["inputDefinitions"]["parameters"]
    expected_choices = {"adapt_method": "adaptsegnet, advent, road, diga, sfda",
                        "distill_adversarial_method": "adaptsegnet, advent", "distill_paradigm": "a, b, c, d, none",
                        "distill_kl_reduction": "class_mean, class_sum", "distill_seg_loss": "ce, border_focal",
                        "train_optimizer": "recipe, sgd, adamw"}
    defaults = form_values(PipelineParams())
    for name, source in stage_fields().items():
        text = PipelineParams.model_fields[name].description
        assert text.startswith(source.config.model_fields[source.field].description), name
        choices = f" (one of: {expected_choices[name]})" if name in expected_choices else ""
        assert form[name]["description"] == text + choices, name
        assert form[name]["defaultValue"] == defaults[name], name
    # the form has no `metric`: the text names the promotion metric the pipeline compares
    assert form["mlflow_promotion_min_gain"]["description"].startswith(
        "smallest gain over the champion in the promotion metric (mIoU as a fraction unless another is named; the "
        "pipeline: mIoU on the target validation split)")
    assert "`metric`" not in form["mlflow_promotion_min_gain"]["description"]
    for name, (config, field, side, note) in SPLITS.items():
        part = "; ".join(p for p in (f"its {side}" if side else "", note) if p)
        assert form[name]["description"] == f"{config.model_fields[field].description}; {part}", name
    assert form["teacher_batch_size"]["description"] == \
        TrainConfig.model_fields["batch_size"].description + "; the teacher's (pretrain, adapt)"
    assert form["train_crop_h"]["description"] == "size (H, W) of the random training crop; its height"


def test_split_parameters_are_one_part_of_their_stage_field():
    """A per-network, per-stage or H/W parameter is one part of its stage field: the field's text
    plus the note naming the part, the field's bounds (of one side, for a size), defaults as before."""
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.params import load_params

    params = PipelineParams.model_fields
    for name, (config, field, side, note) in SPLITS.items():
        stage, param = config.model_fields[field], params[name]
        source = stage_fields()[name]
        assert (source.side, source.note, source.split) == (side, note, True), name
        assert param.description == "; ".join(p for p in (stage.description, side and f"its {side}", note) if p)
        assert param.default == SPLIT_DEFAULTS[name], name
        assert param.annotation is int, name
        # a size's side: > 0 (the training configs' size validator); a whole field: its own bounds
        assert _constraints(param) == ([at.Gt(0)] if side else stage.metadata), name
        if side:
            assert param.default == stage.default[("height", "width").index(side)], name
        with pytest.raises(ConfigError, match=f"field '{name}'"):
            load_params(None, **{name: 0})
    # a side of an HW field takes the element's own bounds; a bad side or word is refused
    from dakd_core.config import HW

    class Eval(StrictConfig):
        size: HW = Field((4, 8), description="input size (H, W)")

    assert _constraints(PipelineParams.model_fields["train_crop_w"]) == [at.Gt(0)]
    with pytest.raises(TypeError, match="side 'depth' of Eval.size: one of height, width"):
        _from(Eval, "size", side="depth")
    with pytest.raises(TypeError, match="unset 'default' of Eval.size: one of recipe, auto, none"):
        _from(Eval, "size", unset="default")
    width = _from(Eval, "size", side="width", note="n")
    bound, field, source = width.__metadata__
    assert (width.__origin__, bound, field.default) == (int, at.Gt(0), 8)
    assert field.description == source.description == "input size (H, W); its width; n"


def test_plan_maps_each_split_parameter_to_its_stage_field():
    """plan.py maps the split parameters explicitly: each one reaches the stages it names, the
    other network's or stage's value stays apart."""
    from dakd_core.orchestration.plan import TRAINING_STAGES, build_plan

    values = {name: SPLIT_DEFAULTS[name] + 3 + i for i, name in enumerate(SPLITS)}
    plan = build_plan(PipelineParams(**values, adapt_method="advent", distill_adversarial_method="adaptsegnet"))
    reaches = {
        "pretrain_iterations": ("pretrain_teacher", "pretrain_student"),
        "adapt_iterations": ("adapt_teacher", "adapt_student"),
        "distill_iterations": ("distill_first", "distill_second"),
        "teacher_batch_size": ("pretrain_teacher", "adapt_teacher"),
        "student_batch_size": ("pretrain_student", "adapt_student", "distill_first", "distill_second"),
        "train_source_resize_h": TRAINING_STAGES, "train_source_resize_w": TRAINING_STAGES,
        "train_crop_h": TRAINING_STAGES, "train_crop_w": TRAINING_STAGES,
        "train_target_resize_h": TRAINING_STAGES[2:], "train_target_resize_w": TRAINING_STAGES[2:],
    }
    assert set(reaches) == set(SPLITS)
    for name, stages in reaches.items():
        _, field, side, _ = SPLITS[name]
        for stage in stages:
            value = plan[stage][field]
            assert (value[("height", "width").index(side)] if side else value) == values[name], (name, stage)
    for stage in TRAINING_STAGES:
        assert not {"teacher_batch_size", "train_crop_h", "crop_h", "pretrain_iterations"} & set(plan[stage]), stage
    # the teacher's stages never see the student's batch, nor pretrain the adapt budget
    assert plan["pretrain_teacher"]["batch_size"] == values["teacher_batch_size"] != values["student_batch_size"]
    assert plan["pretrain_student"]["iterations"] == values["pretrain_iterations"] != values["adapt_iterations"]
    # each stage's method: adapt's never reaches distill (a DistillConfig is an AdaptConfig)
    assert [plan[s]["method"] for s in (*METHODS["adapt_method"][1], *METHODS["distill_adversarial_method"][1])] \
        == ["advent", "advent", "adaptsegnet", "adaptsegnet"]


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


def test_plan_passes_whole_field_parameters_to_every_stage_with_that_field():
    from dakd_core.orchestration.plan import build_plan

    plan = build_plan(PipelineParams(train_seed=7, train_num_workers=0, train_eval_every=10, adapt_lambda_adv_main=0.5,
                                     distill_cwd_tau=2.0, distill_lambda_kl_aux=0.05, train_lr=0.01,
                                     adapt_discriminator_width=24))
    training = ("pretrain_teacher", "pretrain_student", "adapt_teacher", "adapt_student", "distill_first",
                "distill_second")
    for stage in training:
        assert (plan[stage]["seed"], plan[stage]["num_workers"], plan[stage]["lr"]) == (7, 0, 0.01), stage
        assert (plan[stage]["eval_every"], plan[stage]["checkpoint_every"]) == (10, 10), stage
        assert not set(plan[stage]) & set(PipelineParams.model_fields), stage  # the stage fields' own names
    adversarial = training[2:]
    assert all((plan[s]["lambda_adv_main"], plan[s]["d_ndf"]) == (0.5, 24) for s in adversarial)
    assert not any("lambda_adv_main" in plan[s] for s in training[:2])  # PretrainConfig has no such field
    assert [s for s in plan if "cwd_tau" in plan[s]] == ["distill_first", "distill_second"]
    assert plan["distill_first"]["lambda_kl_aux"] == 0.05
    assert plan["distill_first"]["paradigm"] == "c" and plan["distill_second"]["paradigm"] == "d"


# ------------------------------------------------------------------------------ the KFP form


def _compiled():
    return next(yaml.safe_load_all(COMMITTED.read_text()))


def test_sorted_form_keeps_each_group_together():
    """The KFP UI lists the parameters alphabetically: every name starts with its group, so each
    group's parameters are adjacent in that order (one run of each group, none interleaved)."""
    form = sorted(_compiled()["root"]["inputDefinitions"]["parameters"])
    assert form == sorted(PipelineParams.model_fields)
    groups = [group_of(name) for name in form]
    assert "" not in groups, [n for n in form if not group_of(n)]
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert runs == sorted(GROUPS), runs  # each group exactly once: adjacent
    # the settings the issue found scattered now stand with their stage
    assert form.index("distill_teacher_online") - form.index("distill_lambda_kl") in range(1, 14)
    assert groups[form.index("adapt_lambda_adv_main")] == "adapt" and "run_name" not in form


def test_form_has_no_blank_defaults_and_real_booleans():
    form = _compiled()["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("defaultValue") != "" for p in form.values()), [n for n, p in form.items()
                                                                       if p.get("defaultValue") == ""]
    assert all("defaultValue" in p for p in form.values())
    assert {n for n, p in form.items() if p["parameterType"] == "BOOLEAN"} == {"distill_teacher_online"}
    words = {n: p["defaultValue"] for n, p in form.items() if p["defaultValue"] in WORDS}
    assert words == {"train_lr": "recipe", "train_optimizer": "recipe", "distill_lambda_kl_aux": "auto",
                     "mlflow_registered_model": "auto", "teacher_weights": "none", "student_weights": "none"}
    assert form["train_lr"]["parameterType"] == "STRING" and form["train_crop_h"]["parameterType"] == "NUMBER_INTEGER"


def test_words_plan_to_the_stage_configs_own_values():
    """recipe / auto / none, from the form's text, build the same stage configs as leaving the
    field out: the network's recipe, lambda_kl / 10, the registry's derived name, no weights."""
    from dakd_core.config import build_config
    from dakd_core.orchestration.plan import build_plan, stage_settings
    from dakd_core.registry import RegisterConfig
    from dakd_core.train.recipes import recipe_for

    p = PipelineParams(**from_form({"train_lr": "recipe", "train_optimizer": "recipe", "distill_lambda_kl": "0.3",
                                    "distill_lambda_kl_aux": "auto", "teacher_weights": "none",
                                    "mlflow_registered_model": "auto", "student_model": "swiftnet_tiny"}))
    plan = build_plan(p)
    placeholders = dict(source_manifest="s", target_manifest="t", init="i", out="o", teacher="t", teacher_cache="c")
    distill = build_config(DistillConfig, **stage_settings(plan["distill_first"])[0], **placeholders)
    recipe = recipe_for("swiftnet_tiny")  # AdamW at 1e-2, not TrainConfig's SGD at 2.5e-4
    assert (distill.lr, distill.optimizer, distill.schedule) == (recipe["lr"], "adamw", "cosine") == (1e-2, "adamw",
                                                                                                  "cosine")
    assert distill.lambda_kl_aux is None and distill.kl_aux_weight == pytest.approx(0.03)
    pretrain = build_config(PretrainConfig, **stage_settings(plan["pretrain_teacher"])[0], source_manifest="s",
                            out="o")
    assert pretrain.backbone_weights is None
    register = build_config(RegisterConfig, **plan["register"], export="e", metrics="m")
    assert register.name is None  # registry.registered_model_name then derives dakd-gta5-to-cityscapes
    # a number in place of the word reaches the stage as that number
    p = PipelineParams(**from_form({"train_lr": "0.02", "distill_lambda_kl_aux": "0.5", "teacher_weights": "timm:x",
                                    "mlflow_registered_model": "mine"}))
    plan = build_plan(p)
    assert (plan["pretrain_teacher"]["lr"], plan["distill_first"]["lambda_kl_aux"]) == (0.02, 0.5)
    assert (plan["pretrain_teacher"]["backbone_weights"], plan["register"]["name"]) == ("timm:x", "mine")
    assert form_values(p)["train_lr"] == "0.02" and form_values(PipelineParams())["train_lr"] == "recipe"


def test_pipeline_description_is_the_parameter_guide():
    from pipelines.dakd_pipeline import DESCRIPTION, GUIDE

    spec = _compiled()
    assert spec["pipelineInfo"]["description"] == GUIDE == form_guide(DESCRIPTION)
    form = spec["root"]["inputDefinitions"]["parameters"]
    lines = GUIDE.splitlines()
    for group, title in GROUPS.items():
        assert f"**{group}_**: {title}" in lines, group
    for name, p in form.items():
        default = p["defaultValue"]
        shown = str(int(default)) if p["parameterType"] == "NUMBER_INTEGER" else \
            str(default).lower() if p["parameterType"] == "BOOLEAN" else str(default)
        assert f"- `{name}` = `{shown}`: {markdown_text(p['description'])}" in lines or \
            f"- `{name}` = `{default}`: {markdown_text(p['description'])}" in lines, name
    for word, meaning in WORDS.items():
        assert f"`{word}`: {markdown_text(meaning)}" in GUIDE
    # groups in pipeline order, not the form's alphabetical one
    starts = [lines.index(f"**{g}_**: {t}") for g, t in GROUPS.items()]
    assert starts == sorted(starts) and list(GROUPS)[:3] == ["data", "teacher", "student"]
    assert "(one of: a, b, c, d, none)" in lines[lines.index(next(l for l in lines if l.startswith("- `distill_paradigm`")))]


def test_a_name_without_its_group_says_the_forms_name(tmp_path):
    """Configs written before the groups (`lr`, `paradigm`, `run_name`) fail naming the new name."""
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.params import load_run_config

    config = tmp_path / "old.yaml"
    for key, value, says in (("paradigm", "c", "this one is 'distill_paradigm'"), ("lr", 0.01, "'train_lr'"),
                             ("source_resize_h", 64, "'train_source_resize_h'"),
                             ("run_name", "r1", "run_name is no parameter: a run is named by KFP's run name")):
        config.write_text(yaml.safe_dump({"params": {key: value}}))
        with pytest.raises(ConfigError, match=says):
            load_run_config(str(config))
    config.write_text(yaml.safe_dump({"params": {"distill_paradigmm": "c"}}))
    with pytest.raises(ConfigError, match="field 'params.distill_paradigmm': Extra inputs are not permitted"):
        load_run_config(str(config))


def test_guide_quotes_names_markdown_would_read_as_emphasis():
    """The KFP UI renders the guide as markdown: "lambda_kl / 10 ... class_sum" came out as
    "lambdakl / 10 ... classsum" with the text between in italics. Names with `_` and
    <placeholders> are quoted; what already is in backticks stays as it is."""
    assert markdown_text("DAKD: lambda_kl / 10; auto: lambda_kl / 10") == "DAKD: `lambda_kl` / 10; auto: `lambda_kl` / 10"
    assert markdown_text("(one of: class_mean, class_sum)") == "(one of: `class_mean`, `class_sum`)"
    assert markdown_text("auto: dakd-<data_source_format>-to-<data_target_format>") == \
        "auto: `dakd-<data_source_format>-to-<data_target_format>`"
    assert markdown_text("and runs/<run name>/") == "and `runs/<run name>/`"
    assert markdown_text("(`dakd_core/x.py`: the recipe.py: lr_x.)") == "(`dakd_core/x.py`: the recipe.py: `lr_x`.)"
    guide = form_guide("summary")
    for line in guide.splitlines():
        if line.startswith("- "):  # outside code spans, no underscore or placeholder is left
            assert not re.search(r"_|<\w", "".join(line.split("`")[::2])), line
    assert "- `distill_teacher_online` = `false`:" in guide  # as the form's box shows it, not Python's False

