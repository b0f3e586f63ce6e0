"""The `start` task fails fast (issue 14, item 2): on CPU, in seconds, naming the field, before
any GPU task is scheduled. Called through the component's Python function, without KFP."""

from __future__ import annotations

import time

import pytest

from dakd_core.errors import ConfigError, DataError


@pytest.fixture
def roots(tmp_path) -> dict:
    for name in ("src", "tgt"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "images").mkdir()
    return {"data_source_uri": str(tmp_path / "src"), "data_target_uri": (tmp_path / "tgt").as_uri()}


def _start(**params):
    """The start component's own Python function, as its container calls it. A run that passes
    the checks would open the MLflow parent run: each case below must fail before that."""
    from components.start import start

    return start.python_func(params=params, kfp_run_id="job-1", kfp_run_name="Run of dakd")


@pytest.mark.parametrize(("bad", "error", "names"), [
    ({"distill_paradigm": "e"}, ConfigError, "field 'distill_paradigm'"),
    ({"adapt_method": "adaptseg"}, ConfigError, "field 'adapt_method'"),
    ({"distill_lamda_kl": "0.4"}, ConfigError, "field 'distill_lamda_kl'"),  # a typo of a parameter name
    ({"data_source_format": "gta"}, ConfigError, "field 'data_source_format'"),
    ({"train_crop_h": "0.0"}, ConfigError, "field 'train_crop_h'"),
    ({"train_lr": "50.0"}, ConfigError, "field 'train_lr"),  # above MAX_LR
    ({"train_lr": "0"}, ConfigError, "field 'train_lr"),  # 0 is no longer the recipe's word
    ({"distill_kl_reduction": "mean"}, ConfigError, "field 'distill_kl_reduction'"),
    ({"train_gpus_per_task": "0.0"}, ConfigError, "field 'train_gpus_per_task'"),
    # caught where only the stage config knows the rule: in seconds, not after pretrain + adapt
    ({"distill_lambda_cwd": "1.0"}, ConfigError, "stage distill_first"),
    ({"adapt_method": "sfda", "teacher_batch_size": "3.0"}, ConfigError, "stage adapt_teacher"),
    ({"data_source_uri": "/no/such/dataset"}, DataError, "data_source_uri: /no/such/dataset is not a directory"),
    ({"data_target_uri": "http://example.com/data"}, ConfigError, "data_target_uri"),
])
def test_bad_parameters_fail_at_start_naming_the_field(roots, bad, error, names):
    t0 = time.perf_counter()
    with pytest.raises(error, match=names.replace("(", r"\(")):
        _start(**{**roots, **bad})
    assert time.perf_counter() - t0 < 60  # seconds on a shared 2-core machine, not GPU hours


def test_empty_dataset_directory_is_refused(roots, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data_target_uri: .* is an empty directory"):
        _start(**{**roots, "data_target_uri": str(tmp_path / "empty")})


def test_s3_dataset_root_must_hold_objects(s3_store, roots):
    from dakd_core.orchestration.plan import check_dataset_root
    from dakd_core.storage import write_bytes

    with pytest.raises(DataError, match=f"data_source_uri: no object under {s3_store}/gta5"):
        _start(**{**roots, "data_source_uri": f"{s3_store}/gta5"})
    write_bytes(f"{s3_store}/gta5/images/00001.png", b"png")
    check_dataset_root("source_uri", f"{s3_store}/gta5")  # found: no error


def test_parameters_as_kfp_delivers_them_are_read_as_declared():
    """KFP substitutes a dict's parameters as text, integers as floats: read by their types."""
    from dakd_core.orchestration.params import from_form

    assert from_form({"train_crop_h": "512.0", "train_lr": "0.001", "distill_teacher_online": "true",
                      "distill_paradigm": "c", "train_seed": 7.0, "train_crop_w": "1e3"}) == {
        "train_crop_h": 512, "train_lr": 0.001, "distill_teacher_online": True, "distill_paradigm": "c",
        "train_seed": 7, "train_crop_w": 1000}
    # a number-or-word parameter: its word stays a word
    assert from_form({"train_lr": "recipe", "distill_lambda_kl_aux": "auto"}) == {
        "train_lr": "recipe", "distill_lambda_kl_aux": "auto"}
    # not a number: left as given, for the model to refuse naming the field
    assert from_form({"train_crop_h": "tall", "distill_teacher_online": "yes", "train_lr": "fast"}) == {
        "train_crop_h": "tall", "distill_teacher_online": "yes", "train_lr": "fast"}


def test_plan_maps_parameters_onto_stage_fields():
    """The one mapping from the form to the stage configs, checked on values a wrong mapping
    would change."""
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan

    plan = build_plan(PipelineParams(adapt_discriminator_width=32, train_lr=0.01, train_optimizer="adamw",
                                     teacher_weights="s3://w/r101.pt", train_crop_h=256, train_crop_w=384,
                                     distill_paradigm="b", distill_lambda_kl=0.4, eval_resize_h=64,
                                     eval_resize_w=128, mlflow_registered_model="m", mlflow_promotion_min_gain=0.02))
    assert plan["pretrain_teacher"]["backbone_weights"] == "s3://w/r101.pt"
    assert "backbone_weights" not in plan["pretrain_student"] and "backbone_weights" not in plan["adapt_teacher"]
    assert (plan["adapt_student"]["d_ndf"], plan["adapt_student"]["lr"], plan["adapt_student"]["optimizer"]) == \
        (32, 0.01, "adamw")
    assert plan["distill_first"]["crop"] == [256, 384] and plan["distill_first"]["lambda_kl"] == 0.4
    assert plan["distill_first"]["paradigm"] == "b" and plan["distill_second"] == {}
    assert plan["export"] == {"resolution": [64, 128]}
    assert plan["evaluate"] == {"resolution": [64, 128], "table_classes": 19}
    assert plan["register"]["name"] == "m" and plan["promote"] == {"min_gain": 0.02}
    # the int side's parameters through the plan: kl_reduction (default class_sum) to both distill
    # stages, gpus_per_task to every training stage (run_stage: torchrun when > 1), to no other stage
    assert build_plan(PipelineParams())["distill_first"]["kl_reduction"] == "class_sum"
    wide = build_plan(PipelineParams(distill_kl_reduction="class_mean", train_gpus_per_task=4))
    assert (wide["distill_first"]["kl_reduction"], wide["distill_second"]["kl_reduction"]) == ("class_mean",) * 2
    assert {stage: wide[stage].get("gpus_per_task") for stage in wide} == {
        "pretrain_teacher": 4, "pretrain_student": 4, "adapt_teacher": 4, "adapt_student": 4, "cache_teacher": None,
        "distill_first": 4, "distill_second": 4, "export": None, "evaluate": None, "register": None, "promote": None}
    # the network's recipe when lr / optimizer are left at "recipe"; the registry name derived
    # ("auto": None for RegisterConfig), the backbones from scratch ("none")
    default = build_plan(PipelineParams())["pretrain_student"]
    assert "lr" not in default and "optimizer" not in default and "backbone_weights" not in default
    assert build_plan(PipelineParams())["register"]["name"] is None


@pytest.mark.parametrize(("weights", "names"), [
    ({}, "field 'teacher_weights' and 'student_weights': adapt_method 'road'"),
    ({"teacher_weights": "s3://w/r101.pt"}, "field 'student_weights': adapt_method 'road'"),
    ({"student_weights": "timm:resnet18.a1_in1k"}, "field 'teacher_weights': adapt_method 'road'"),
])
def test_road_without_backbone_weights_fails_at_start_naming_the_fields(roots, weights, names):
    """ROAD's reference model is the ImageNet-pretrained network (road_reference 'imagenet'): a
    road run without both networks' weights stops at start, naming the form's fields."""
    with pytest.raises(ConfigError, match=names):
        _start(**roots, adapt_method="road", **weights)


def test_road_adapt_stages_get_each_networks_backbone_weights(roots):
    """Under road, each adapt stage gets its network's weights (its ROAD reference model is built
    with them) and its config builds; other methods start adapt from the pretrain checkpoint only,
    so their adapt settings (and cache keys) carry no weights."""
    import json

    from dakd_core.orchestration.plan import plan_run

    weights = {"teacher_weights": "s3://w/r101.pt", "student_weights": "timm:resnet18.a1_in1k"}
    _, plan = plan_run({**roots, **weights, "adapt_method": "road"})
    settings = {stage: json.loads(text) for stage, text in plan.items()}
    for role in ("teacher", "student"):
        for stage in (f"pretrain_{role}", f"adapt_{role}"):
            assert settings[stage]["backbone_weights"] == weights[f"{role}_weights"], stage
    assert settings["adapt_teacher"]["method"] == "road" and "road_reference" not in settings["adapt_teacher"]
    assert not any("backbone_weights" in settings[s] for s in ("distill_first", "distill_second"))
    _, plan = plan_run({**roots, **weights, "adapt_method": "advent"})
    assert not any("backbone_weights" in json.loads(plan[s]) for s in ("adapt_teacher", "adapt_student"))


def test_the_run_is_named_by_kfps_run_name_as_one_store_segment(monkeypatch):
    """No run-name parameter: start names the run's folder and parent run after KFP's run name
    (the form's "Run name"), made one safe store key segment, plus the run id's start (two runs may
    share a name); `dakd run` passes its own name through DAKD_RUN_NAME."""
    from dakd_core.orchestration.context import run_name_for
    from dakd_core.orchestration.tasks.common import run_prefix

    monkeypatch.delenv("DAKD_RUN_NAME", raising=False)
    uuid = "3f2a9c1e-7d4b-4c55-9a1e-000000000000"
    assert run_name_for("Run of dakd (2026-12-07 10:45:01.123)", uuid) == "Run-of-dakd-2026-12-07-10-45-01.123-3f2a9c1e"
    assert run_name_for("../../other-team", uuid) == "other-team-3f2a9c1e"
    assert run_name_for("", uuid) == run_name_for("  /// ", uuid) == f"kfp-{uuid}"
    assert len(run_name_for("x" * 300, uuid)) == 109
    for name in ("Run of dakd (a/b)", "../../other-team", "x" * 300, ""):
        run_prefix("s3://dakd/store", run_name_for(name, uuid))  # always one valid segment
    monkeypatch.setenv("DAKD_RUN_NAME", "demo12")
    assert run_name_for("dakd-2026-12-07-10-45-01-123456", uuid) == "demo12"
