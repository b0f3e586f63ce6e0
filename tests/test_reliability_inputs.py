"""Reliability, second round (issue 16): the checks behind the bad-input corpus that are not one
CLI call each - every float field of every config, checkpoint finiteness and a read-only
tracking database seen by an unprivileged process.

The CLI cases themselves live in tests/test_reliability_bad_inputs.py (and docs/reliability.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import torch

from _distill_data import H, W, make_split
from dakd_core.config import StrictConfig, build_config, load_yaml
from dakd_core.errors import ConfigError, TrainingError
from dakd_core.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
CONFIG_MODULES = ("dakd_core.train.configs", "dakd_core.train.distill_config", "dakd_core.cache",
                  "dakd_core.data.ingest", "dakd_core.data.synth", "dakd_core.evaluation.evaluate",
                  "dakd_core.evaluation.score", "dakd_core.export", "dakd_core.registry",
                  "dakd_core.orchestration.params")


# ----------------------------------------------------------------------------- 1. configs


def _all_configs() -> list[type[StrictConfig]]:
    import importlib

    for name in CONFIG_MODULES:
        importlib.import_module(name)
    found, todo = [], [StrictConfig]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def _float_slots(annotation) -> list[tuple[object, str]]:
    """(tuple index or None, error loc suffix) for each float inside a field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is float:
        return [(None, "")]
    if origin in (typing.Union, types.UnionType):
        return [slot for a in args if a is not type(None) for slot in _float_slots(a)]
    if origin is tuple and float in args:
        return [(i, f".{i}") for i, a in enumerate(args) if a is float]
    return []


def _float_fields():
    for cls in _all_configs():
        for name, info in cls.model_fields.items():
            for index, suffix in _float_slots(info.annotation):
                yield cls, name, index, suffix


FLOAT_FIELDS = list(_float_fields())


def test_the_float_field_list_covers_the_training_and_pipeline_configs():
    names = {(cls.__name__, name) for cls, name, _, _ in FLOAT_FIELDS}
    assert {("PretrainConfig", "lr"), ("AdaptConfig", "d_betas"), ("DistillConfig", "temperature"),
            ("PipelineParams", "lr"), ("ExportConfig", "max_miou_delta"), ("AdaptConfig", "sfda_tau")} <= names
    assert len(FLOAT_FIELDS) >= 90  # 93 slots today; guards the introspection against finding nothing


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_float_field_of_every_config_refuses_non_finite_values(bad):
    accepted = []
    for cls, name, index, suffix in FLOAT_FIELDS:
        default = cls.model_fields[name].default
        if index is None:
            value = bad
        else:  # the default tuple with one element replaced
            value = list(default) if isinstance(default, tuple) else [0.5] * (index + 1)
            value[index] = bad
        try:
            build_config(cls, **{name: value})
        except ConfigError as e:
            # Other required fields are missing too: the message must still name this one.
            if f"field '{name}{suffix}': Input should be a finite number" not in str(e):
                accepted.append(f"{cls.__name__}.{name}{suffix}: {str(e)[:300]}")
        else:
            accepted.append(f"{cls.__name__}.{name}{suffix} accepted {bad}")
    assert not accepted, "\n".join(accepted)


@pytest.mark.parametrize("text,field", [
    ("params:\n  lr: .inf\n", "params.lr"),
    ("params:\n  temperature: .nan\n", "params.temperature"),
    ("params:\n  lambda_kl: -.inf\n", "params.lambda_kl"),
])
def test_pipeline_run_config_refuses_non_finite_params(tmp_path, text, field):
    from dakd_core.orchestration.params import load_params, load_run_config

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"field '{field}': Input should be a finite number"):
        load_run_config(str(path))
    inner = tmp_path / "params.yaml"
    inner.write_text(text.replace("params:\n  ", ""))
    with pytest.raises(ConfigError, match=rf"field '{field.split('.')[1]}': Input should be a finite number"):
        load_params(str(inner))


def test_assignment_is_checked_too():
    from pydantic import ValidationError

    from dakd_core.train.configs import PretrainConfig

    cfg = build_config(PretrainConfig, source_manifest="file:///m", out="file:///o")
    with pytest.raises(ValidationError, match="finite number"):
        cfg.lr = float("inf")
    assert cfg.lr == 2.5e-4


@pytest.mark.parametrize("text,message", [
    ("lr: 0.1\nlr: 0.2\n", r"duplicate key 'lr' \(lines 1 and 2\)"),
    ("{lr: 0.1, lr: 0.2}\n", r"duplicate key 'lr' \(lines 1 and 1\)"),
    ("params:\n  lr: 0.1\n  seed: 1\n  lr: 0.3\nlocal: {}\n", r"duplicate key 'lr' \(lines 2 and 4\)"),
    ("params: {}\nlocal: {}\nparams: {}\n", r"duplicate key 'params' \(lines 1 and 3\)"),
])
def test_duplicate_yaml_keys_name_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config file {path}: {message}"):
        load_yaml(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 0.1, seed: 1}\nrun:\n  <<: *b\n  lr: 0.5\n")
    assert load_yaml(path)["run"] == {"lr": 0.5, "seed": 1}


def test_config_file_that_is_binary_a_directory_or_missing(tmp_path):
    from dakd_core.train.configs import PretrainConfig

    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00\x01" * 8)
    with pytest.raises(ConfigError, match=rf"config file {binary} is not a YAML text file: byte 4 \(0xff\)"):
        build_config(PretrainConfig, binary)
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a directory"):
        build_config(PretrainConfig, tmp_path)
    with pytest.raises(ConfigError, match=rf"config file not found: {tmp_path / 'nope.yaml'}"):
        build_config(PretrainConfig, tmp_path / "nope.yaml")


def test_generated_flags_parse_constrained_size_tuples():
    import argparse

    from dakd_core.cli._config_args import add_config_arguments, config_from_args
    from dakd_core.config import HW

    class Sized(StrictConfig):
        size: HW = (4, 8)

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Sized)
    assert config_from_args(Sized, parser.parse_args(["--size", "3", "5"])).size == (3, 5)
    with pytest.raises(ConfigError, match=r"field 'size\.1': Input should be greater than 0"):
        config_from_args(Sized, parser.parse_args(["--size", "3", "0"]))


# ----------------------------------------------------------------------------- 2. checkpoints


def _tiny_payload(step=3):
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload

    torch.manual_seed(0)
    return make_payload(create_model("deeplabv2_tiny", num_classes=19), step=step)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_last_good_one(tmp_path, bad):
    from dakd_core.models.checkpoint import load_checkpoint, save_checkpoint

    store = open_store(tmp_path.as_uri())
    good = save_checkpoint(store, _tiny_payload(step=1), "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    payload = _tiny_payload(step=2)
    name = [k for k, v in payload["model"].items() if v.is_floating_point()][-1]
    payload["model"][name].view(-1)[:2] = bad
    with pytest.raises(TrainingError, match=rf"refusing to save checkpoint {good} \(step 2\), nothing written: "
                                            rf"checkpoint entry payload\.model\.{name} holds 2 non-finite"):
        save_checkpoint(store, payload, "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before  # the last good checkpoint is kept
    with pytest.raises(TrainingError, match=r"step_2\.pt \(step 2\)"):
        save_checkpoint((tmp_path / "step_2.pt").as_uri(), payload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left either
    assert load_checkpoint(good)["step"] == 1


def test_save_checkpoint_checks_every_tensor_entry_but_not_integer_ones(tmp_path):
    from dakd_core.models.checkpoint import save_checkpoint

    payload = _tiny_payload()
    payload["discriminator"] = {"w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(TrainingError, match=r"payload\.discriminator\.w holds 1 non-finite"):
        save_checkpoint((tmp_path / "d.pt").as_uri(), payload)
    payload["discriminator"] = {"w": torch.ones(2)}
    payload["rng"] = torch.randint(0, 255, (8,), dtype=torch.uint8)
    payload["best_metric"] = float("nan")  # a plain float (no selection yet) is not a weight
    save_checkpoint((tmp_path / "d.pt").as_uri(), payload)
    assert (tmp_path / "d.pt").stat().st_size > 0


# ----------------------------------------------------------------------------- 8. unprivileged


def _unprivileged(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`dakd argv` in a process that file permissions apply to: as root, without the capabilities
    that bypass them (CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH), else as the current user."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions would not apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAKD_NO_PROGRESS": "1", **env}
    return subprocess.run([*prefix, sys.executable, "-m", "dakd_core", *argv], env=env, capture_output=True,
                          text=True, timeout=1800)  # minutes only on a starved machine; seconds usually


def test_read_only_tracking_database_file_is_a_named_error_exit_2(tmp_path, mlflow_uri):
    store = tmp_path.as_uri()
    src = make_split(store, "src", "source", 2, seed=1)
    db = Path(mlflow_uri[len("sqlite:///"):])
    db.chmod(0o444)
    out = tmp_path / "run"
    argv = ["pretrain", "--model", "deeplabv2_tiny", "--source-manifest", src, "--out", out.as_uri(), "--crop",
            str(H), str(W), "--source-resize", str(H), str(W), "--batch-size", "2", "--num-workers", "0",
            "--iterations", "1", "--device", "cpu"]
    try:
        result = _unprivileged(argv, {"MLFLOW_TRACKING_URI": mlflow_uri})
    finally:
        db.chmod(0o644)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"dakd pretrain: error: MLflow tracking database {mlflow_uri} cannot be written "
            "(attempt to write a readonly database)") in result.stderr
    assert not (out / "result.json").exists()
