"""`dakd run --sweep` (issue 32 item 3) and `dakd compare` (item 4): every point is planned before
any runs, a bad point exits 2 naming the point and the field; the points run in order into one
output folder; the comparison table reads the pipeline's MLflow parent runs."""

from __future__ import annotations

import pytest
import yaml

from dakd_core.cli import main
from dakd_core.errors import ConfigError
from dakd_core.orchestration import sweep


def _sweep(tmp_path, body: dict, base: dict | None = None):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or {"params": {"distill_paradigm": "c"},
                                                                 "local": {"out_dir": str(tmp_path / "out")}}))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **body}, sort_keys=False))  # the grid's order
    return str(path)


def test_grid_then_points_in_the_order_written(tmp_path):
    path = _sweep(tmp_path, {"grid": {"distill_paradigm": ["b", "c"], "distill_lambda_kl": [0.1, 0.4]},
                             "points": [{"distill_paradigm": "d", "train_lr": "recipe"}]})
    points, planned = sweep.load_sweep(path, None, None)
    assert points == [{"distill_paradigm": "b", "distill_lambda_kl": 0.1}, {"distill_paradigm": "b", "distill_lambda_kl": 0.4},
                      {"distill_paradigm": "c", "distill_lambda_kl": 0.1}, {"distill_paradigm": "c", "distill_lambda_kl": 0.4},
                      {"distill_paradigm": "d", "train_lr": "recipe"}]
    assert [(c.params.distill_paradigm, c.params.distill_lambda_kl) for c in planned] == [
        ("b", 0.1), ("b", 0.4), ("c", 0.1), ("c", 0.4), ("d", 0.1)]
    assert {c.local.out_dir for c in planned} == {str(tmp_path / "out")}  # one folder: shared stages


@pytest.mark.parametrize(("body", "message"), [
    ({"grid": {"distill_paradigm": ["c", "e", "d"]}},
     r"sweep point 2 of 3 \(distill_paradigm=e\): .*field 'distill_paradigm'"),
    ({"points": [{"distill_paradigm": "b"}, {"distill_lambda_cwd": 1.0}]},  # only the distill stage knows this rule
     r"sweep point 2 of 2 \(distill_lambda_cwd=1.0\): stage distill_first: .*teacher_online"),
    ({"points": [{"paradigm": "b"}]}, r"sweep point 1 of 1 \(paradigm=b\): .*'distill_paradigm'"),
    ({"grid": {"distill_paradigm": []}}, r"grid field 'distill_paradigm' has no values"),
    ({}, r"no points \(set `grid:` and/or `points:`\)"),
    ({"grid": {"distill_paradigm": "c"}}, r"field 'grid\.distill_paradigm'"),
])
def test_a_bad_point_exits_2_naming_it_before_any_stage_runs(tmp_path, monkeypatch, capsys, body, message):
    from dakd_core.orchestration import local

    ran = []
    monkeypatch.setattr(local, "run_local", lambda *a, **k: ran.append(a))
    path = _sweep(tmp_path, body)
    with pytest.raises(ConfigError, match="(?s)" + message):
        sweep.load_sweep(path, None, None)
    assert main(["run", "--sweep", path]) == 2
    assert "dakd run: error:" in capsys.readouterr().err and ran == []
    assert not (tmp_path / "out").exists()


def test_points_run_in_order_into_one_folder_then_one_table(tmp_path, monkeypatch, capsys):
    from dakd_core.orchestration import compare, local

    ran = []

    def fake_run(cfg, run_name=None, reuse=True):
        ran.append((run_name, cfg.params.distill_paradigm, reuse, cfg.local.out_dir))
        return run_name

    monkeypatch.setattr(local, "run_local", fake_run)
    monkeypatch.setattr(local, "format_summary", lambda res: f"summary of {res}")
    monkeypatch.setattr(compare, "compare", lambda experiment, names: (f"table of {experiment}: {names}", "run-9"))
    path = _sweep(tmp_path, {"grid": {"distill_paradigm": ["b", "c", "d"]}})
    assert main(["run", "--sweep", path, "--run-name", "pd", "--no-reuse", "--out", str(tmp_path / "o2")]) == 0
    out = str(tmp_path / "o2")
    assert ran == [("pd-1", "b", False, out), ("pd-2", "c", False, out), ("pd-3", "d", False, out)]
    printed = capsys.readouterr().out
    assert "== point 2/3: distill_paradigm=c (run pd-2)" in printed and "summary of pd-3" in printed
    assert "table of dakd: ['pd-1', 'pd-2', 'pd-3']" in printed and "logged to MLflow run run-9" in printed


# ------------------------------------------------------------------------------ dakd compare


def _parent(client, experiment: str, name: str, params: dict, miou: dict, promotion: str | None):
    from dakd_core.orchestration.parent_run import open_parent_run

    run_id = open_parent_run(experiment, f"job-{name}", name, params)
    for key, value in miou.items():
        client.log_metric(run_id, f"miou.{key}", value)
    client.log_metric(run_id, "gain.distilled_vs_adapted_student", miou["student_distilled"] - miou["student_adapted"])
    if promotion:
        client.set_tag(run_id, "dakd.promotion", promotion)
        client.set_tag(run_id, "dakd.registered_version", f"dakd-gta5-to-cityscapes/{name[-1]}")
    client.set_terminated(run_id)
    return run_id


def test_compare_tables_the_parent_runs_with_what_differs(tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # not mlflow's global URI
    common = {"data_source_format": "gta5", "data_target_format": "cityscapes", "train_seed": 7}
    miou = {"teacher_source_only": 0.25, "teacher_adapted": 0.4376, "student_source_only": 0.2272,
            "student_adapted": 0.3917, "student_distilled": 0.4123, "student_distilled_onnx_fp16": 0.4125}
    _parent(client, "exp", "pd-1", {**common, "distill_paradigm": "b", "data_store_uri": "file:///a"}, miou, "promoted")
    _parent(client, "exp", "pd-2", {**common, "distill_paradigm": "c", "data_store_uri": "file:///b"},
            {**miou, "student_distilled": 0.3817}, "kept")
    assert main(["compare", "--experiment", "exp", "--run-name", "pd-2", "--run-name", "pd-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "pair", "paradigm", "distill_paradigm", "T src", "T DA", "S src", "S DA", "S dist",
                      "S ONNX", "gain", "registry"]  # train_seed and the store are the same / no setting
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
    assert rows[0] == ["pd-2", "gta5->cityscapes", "c", "c", "25.00", "43.76", "22.72", "39.17", "38.17", "41.25",
                       "-1.00", "dakd-gta5-to-cityscapes/2 kept"]
    assert rows[1][7:11] == ["39.17", "41.23", "41.25", "+2.06"]
    logged = lines[-1].split()[4]
    artifacts = {a.path for a in client.list_artifacts(logged)}
    assert artifacts == {"compare.md", "compare.png"}
    assert client.get_run(logged).info.run_name == "compare"
    with pytest.raises(ConfigError, match="no pipeline parent run named pd-7 in experiment 'exp'"):
        from dakd_core.orchestration.compare import compare

        compare("exp", ["pd-7"], log=False)
    assert main(["compare", "--experiment", "nope", "--no-mlflow"]) == 2
