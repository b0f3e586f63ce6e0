"""Per-pair configs (issue 32 item 1): every file under configs/pairs/ is what `dakd submit --config`
and `dakd run --config` take as it is. Each one plans (every stage config built: `start`'s checks
short of the datasets) and its parameters fit the compiled pipeline's form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAIRS = sorted((ROOT / "configs" / "pairs").glob("*.yaml"))
KFP_TYPES = {bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING"}


def test_the_four_pairs_of_the_papers_are_there():
    assert [p.stem for p in PAIRS] == ["bdd100k_to_cityscapes", "cityscapes_to_acdc", "gta5_to_cityscapes",
                                       "synthia_to_cityscapes"]


@pytest.mark.parametrize("path", PAIRS, ids=[p.stem for p in PAIRS])
def test_pair_config_plans_every_stage_and_fits_the_compiled_form(path):
    from dakd_core.orchestration.kfp_client import submit_params
    from dakd_core.orchestration.params import load_run_config
    from dakd_core.orchestration.plan import checked_plan

    p = load_run_config(str(path)).params
    source, target = path.stem.split("_to_")
    assert (p.data_source_format, p.data_target_format) == (source, target)
    plan = checked_plan(p)  # every stage's config model built from it, or a ConfigError naming the field
    assert plan["pretrain_teacher"]["model"] == p.teacher_model and plan["register"]["source"] == source
    # `dakd submit --config` sends these: each one a parameter of the compiled pipeline, of its type
    form = next(yaml.safe_load_all((ROOT / "pipelines" / "dakd_pipeline.yaml").read_text()))
    inputs = form["root"]["inputDefinitions"]["parameters"]
    sent = submit_params(str(path))
    assert set(sent) == set(yaml.safe_load(path.read_text())["params"])
    for name, value in sent.items():
        assert inputs[name]["parameterType"] == KFP_TYPES[type(value)], name


def _source_comment(body: list[str], i: int) -> str:
    """The comment that gives setting i its source: its own, else the nearest one above (the
    setting above's, e.g. the height's for a width; a comment block is read whole)."""
    own = body[i].partition("#")[2]
    if own:
        return own
    j = i - 1
    while j >= 0 and "#" not in body[j]:
        j -= 1
    if j < 0 or not body[j].lstrip().startswith("#"):
        return body[j].partition("#")[2] if j >= 0 else ""
    block = []
    while j >= 0 and body[j].lstrip().startswith("#"):
        block.insert(0, body[j])
        j -= 1
    return " ".join(block)


@pytest.mark.parametrize("path", PAIRS, ids=[p.stem for p in PAIRS])
def test_every_setting_names_its_source(path):
    """A setting's line says where its value comes from, or the nearest comment above it does (the
    comment block before a group of settings, the height's comment for the width after it)."""
    lines = path.read_text().splitlines()
    body = lines[lines.index("params:") + 1:lines.index("local:")]
    for i, line in enumerate(body):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key = line.split(":")[0].strip()
        if key.startswith("data_") or key == "mlflow_experiment":
            continue  # where the data and the runs live: the user's
        comment = _source_comment(body, i)
        assert comment.strip(), (path.name, key)
        assert re.search(r"seed 00\d|AdaptSegNet|dakd", comment), (path.name, key, comment)


def test_pairs_keep_the_papers_settings():
    """Spot checks a wrong copy would break: the SYNTHIA protocol's 16 classes at SYNTHIA's size,
    BDD's DRN-D-38-sized teacher, the real-time student at 0.8 of ACDC's resolution with ACDC's
    per-condition target, DAKD's weights everywhere."""
    from dakd_core.orchestration.params import load_run_config

    pairs = {path.stem: load_run_config(str(path)).params for path in PAIRS}
    synthia, bdd, acdc = pairs["synthia_to_cityscapes"], pairs["bdd100k_to_cityscapes"], pairs["cityscapes_to_acdc"]
    assert (synthia.eval_table_classes, synthia.train_source_resize_h, synthia.train_source_resize_w) == (16, 760, 1280)
    assert (bdd.teacher_model, bdd.student_model) == ("deeplabv2_resnet34", "deeplabv2_resnet18")
    assert (acdc.student_model, acdc.data_target_format, acdc.train_crop_h, acdc.train_target_resize_w) == \
        ("swiftnet_resnet18", "acdc", 864, 1536)
    for name, p in pairs.items():
        assert (p.distill_lambda_mse, p.distill_lambda_pseudo, p.distill_lambda_kl_aux) == (0.01, 1.0, "auto"), name
        assert p.distill_paradigm == "d" and p.teacher_weights.startswith("timm:"), name
