"""dakd bench: the results smoke (tiny preset, end to end through the CLI), the claim checks and
the performance table on given numbers, bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dakd_core.bench import report, results
from dakd_core.bench import rows as bench_rows
from dakd_core.bench.perf import PerfRow, markdown_table, perf_rows
from dakd_core.cli import main as dakd_main
from dakd_core.errors import ConfigError
from dakd_core.labels import CLASS_NAMES
from dakd_core.models.checkpoint import load_checkpoint


def _seed_metrics(values: dict[str, float], tune: dict[str, float] | None = None) -> dict:
    """Rows of one seed: val mIoU `v`, last checkpoint v - 0.01, tune mIoU from `tune` (default v)."""
    tune = tune or {}
    return {k: {"miou": v, "miou_last": v - 0.01, "tune_miou": tune.get(k, v), "num_parameters": 1000,
                "per_class_iou": {c: (v if c == "road" else None) for c in CLASS_NAMES}}
            for k, v in values.items()}


def test_summary_and_claims_on_given_numbers():
    base = {"teacher_source_only": 0.30, "student_source_only": 0.20, "teacher_adapted": 0.40,
            "student_adapted": 0.25, "paradigm_a": 0.26, "paradigm_b": 0.41, "paradigm_c": 0.42,
            "paradigm_d": 0.42, "kl_only": 0.3, "kl_class_mean": 0.3, "mse_only": 0.3, "pseudo_only": 0.3,
            "lambda_target_0.1": 0.3, "lambda_target_0.5": 0.3, "student_advent": 0.22, "student_road": 0.24,
            "student_road_batch_bn": 0.26, "student_diga": 0.27, "student_sfda": 0.19, "rt_source_only": 0.1, "rt_dakd": 0.2, "rt_cwd": 0.21,
            "rt_lad": 0.2, "rt_border": 0.19, "student_photometric": 0.23, "target_oracle": 0.45,
            "teacher_adapted_photometric": 0.425, "teacher_diga": 0.30, "teacher_adabn": 0.37, "student_adabn": 0.24,
            "student_continued": 0.39, "student_continued_d": 0.50, "paradigm_a_checkpoint_bn": 0.27,
            "paradigm_c_checkpoint_bn": 0.40, "paradigm_d_long": 0.41, "student_continued_d_long": 0.45}
    seed1 = dict(base, paradigm_b=0.35, paradigm_a=0.24, teacher_adapted=0.34, teacher_adapted_photometric=0.33,
                 student_continued=0.30)  # seed 1: (b) below the teacher
    # tune: the photometric teacher wins on seed 0 only; (c) has the best mean over seeds
    # (a .30, b .445, c .45, d .44), though (d) is best on seed 0 and (b) on neither
    tune0 = {"teacher_adapted": 0.50, "teacher_adapted_photometric": 0.52, "teacher_diga": 0.40,
             "paradigm_a": 0.30, "paradigm_b": 0.45, "paradigm_c": 0.44, "paradigm_d": 0.46}
    tune1 = dict(tune0, teacher_adapted=0.49, teacher_adapted_photometric=0.47, paradigm_b=0.44, paradigm_c=0.46,
                 paradigm_d=0.42)
    doc = report.summarise({0: _seed_metrics(base, tune0), 1: _seed_metrics(seed1, tune1)}, bench_rows.ROWS)
    assert doc["chosen_paradigm"] == "paradigm_c"
    assert doc["teacher_per_seed"] == {"0": "teacher_adapted_photometric", "1": "teacher_adapted"}
    assert doc["rows"]["paradigm_c"]["miou_last"]["mean"] == pytest.approx(0.41)
    assert doc["rows"]["paradigm_c"]["tune_miou"]["mean"] == pytest.approx(0.45)
    assert "(`paradigm_c`) **(chosen on tune)** | 0.00M | 42.00 ± 0.00 | 42.00, 42.00 | 41.00 ± 0.00 | 45.00 ± " \
        in report.markdown_main_table(doc)
    b = doc["rows"]["paradigm_b"]
    assert b["miou"]["mean"] == pytest.approx(0.38)
    assert b["miou"]["std"] == pytest.approx(0.0424264, rel=1e-4)  # sample std of 0.41, 0.35
    assert b["per_class_iou"]["road"] == pytest.approx(0.38) and b["per_class_iou"]["car"] is None
    claims = {c["claim"]: c for c in doc["claims"]}
    # (b) - teacher: seed 0 0.41 - 0.40 = +1, seed 1 0.35 - 0.34 = +1 point
    assert claims["(b) >= teacher"]["holds"] is True and claims["(b) >= teacher"]["seeds_holding"] == 2
    assert claims["(d) >= (c)"]["holds"] is True  # equal means satisfy >=
    assert claims["(a) > undistilled student"]["difference_points"] == pytest.approx(0.0)
    assert claims["(a) > undistilled student"]["holds"] is False  # equal means do not satisfy >
    # adapted teacher - source-only - 5: seed 0 40-30-5 = +5, seed 1 34-30-5 = -1 -> mean +2, std 4.24
    five = claims["adapted teacher >= source-only teacher + 5"]
    assert five["difference_points"] == pytest.approx(7.0) and five["excess_points"] == pytest.approx(2.0)
    assert five["excess_std_points"] == pytest.approx(4.2426, rel=1e-4) and five["seeds_holding"] == 1
    assert five["holds"] is True and five["margin_points"] == pytest.approx(5.0)
    # the chosen paradigm (c, 42 on both seeds) against the no-teacher control of its budget
    # (student_continued: 39, 30; not student_continued_d, 50): 42-39-2 = +1, 42-30-2 = +10
    control = claims["DAKD student (paradigm chosen on tune) >= the same budget without a teacher + 2"]
    assert control["excess_points"] == pytest.approx(5.5) and control["seeds_holding"] == 2
    # against the teacher that distilled on each seed (photometric 42.5 on seed 0, plain 34 on seed 1)
    # with margin -1: 42-42.5+1 = +0.5, 42-34+1 = +9 (the plain teacher on both would give +3, +9)
    teacher = claims["DAKD student (paradigm chosen on tune) >= its teacher - 1"]
    assert teacher["excess_points"] == pytest.approx(4.75) and teacher["seeds_holding"] == 2
    assert teacher["left"] == "@chosen" and teacher["right"] == "@teacher"
    # photometric 23: 42-23-2 = +17 on both seeds
    assert claims["DAKD student (paradigm chosen on tune) >= photometric augmentation + 2"]["excess_points"] == \
        pytest.approx(17.0)
    # adapted teacher vs its BN-only control (37), margin 2: 40-37-2 = +1, 34-37-2 = -5
    adabn = claims["adapted teacher >= its BN-statistics-only control + 2"]
    assert adabn["excess_points"] == pytest.approx(-2.0) and adabn["seeds_holding"] == 1 and not adabn["holds"]
    assert claims["adapted student > its BN-statistics-only control"]["seeds_holding"] == 2
    # per-domain cache statistics: (a) 26 / 24 against 27 from the checkpoint-statistics cache, (c) 42 against 40
    stats_a = claims["(a): source labelled with source BN statistics > with the teacher's target ones"]
    assert stats_a["difference_points"] == pytest.approx(-2.0) and stats_a["seeds_holding"] == 0
    assert claims["(c): source labelled with source BN statistics > with the teacher's target ones"][
        "difference_points"] == pytest.approx(2.0)
    # absolute level: teacher 40 and 34 against 35 -> +5, -1
    level = claims["adapted teacher >= 35 % mIoU"]
    assert level["excess_points"] == pytest.approx(2.0) and level["seeds_holding"] == 1 and level["right"] == "None"
    assert claims["target oracle > adapted teacher"]["seeds_holding"] == 2
    assert "| (b) >= teacher | +1.00 | +1.00 ± 0.00 | holds | 2/2 |" in report.markdown_claims(doc)
    assert claims["DiGA > AdaptSegNet (student)"]["holds"] and not claims["ROAD > AdaptSegNet (student)"]["holds"]
    road_bn = claims["ROAD: reference on target batch statistics > on its running (source) ones"]
    assert road_bn["difference_points"] == pytest.approx(2.0) and road_bn["seeds_holding"] == 2  # 26 - 24
    assert not claims["SFDA, no source data > source-only (student)"]["holds"]
    assert claims["+ CWD > DAKD alone (real-time student)"]["holds"] and not claims["+ LAD > DAKD alone (real-time student)"]["holds"]
    assert report.markdown_weather(doc) is None  # no weather target in these numbers
    assert "source-only student (end of training) >= 60 % mIoU on source val" not in claims  # not measured here


def test_source_val_claim_reads_the_source_val_miou():
    seeds = {}
    for seed, src_val in ((0, 0.63), (1, 0.58)):
        rows = _seed_metrics({"teacher_source_only": 0.30, "student_source_only": 0.20})
        rows["student_source_only"]["source_val_last_miou"] = src_val
        rows["student_source_only"]["source_val_miou"] = 0.50  # an early checkpoint, selected on target tune
        rows["teacher_source_only"]["source_val_miou"] = 0.70
        seeds[seed] = rows
    doc = report.summarise(seeds, [r for r in results.ROWS if r.key in ("teacher_source_only", "student_source_only")])
    claim = next(c for c in doc["claims"]
                 if c["claim"] == "source-only student (end of training) >= 60 % mIoU on source val")
    # 63 - 60 = +3, 58 - 60 = -2 (neither the target val mIoU, 20, nor the selected checkpoint's 50)
    assert claim["excess_points"] == pytest.approx(0.5) and claim["seeds_holding"] == 1
    assert doc["rows"]["student_source_only"]["source_val_last_miou"]["mean"] == pytest.approx(0.605)
    text = report.markdown_source_val(doc)
    assert "`student_source_only` 50.00 ± 0.00 (at the end of its training: 60.50 ± 3.54)" in text
    assert "`teacher_source_only` 70.00 ± 0.00," in text


@pytest.mark.parametrize("long_tune, chosen, control_miou", [(0.55, "paradigm_d", 0.43),
                                                            (0.65, "paradigm_d_long", 0.38)])
def test_chosen_paradigm_d_is_held_to_the_control_with_its_budget(long_tune, chosen, control_miou):
    """(d) continues from (c), so its no-teacher control is student_continued_d (2x the budget); (d) at
    4x, student_continued_d_long (5x). The budget is chosen on tune with the paradigm."""
    keys = ("student_adapted", "student_continued", "student_continued_d", "student_continued_d_long",
            "paradigm_c", "paradigm_d", "paradigm_d_long")
    seeds = {0: _seed_metrics(dict(zip(keys, (0.40, 0.41, 0.43, 0.38, 0.44, 0.46, 0.45))),
                              {"paradigm_c": 0.5, "paradigm_d": 0.6, "paradigm_d_long": long_tune})}
    doc = report.summarise(seeds, [r for r in bench_rows.ROWS if r.key in keys])
    assert doc["chosen_paradigm"] == chosen
    claim = next(c for c in doc["claims"] if c["claim"].endswith("the same budget without a teacher + 2"))
    # d: 46 - 43 - 2 = +1; d_long: 45 - 38 - 2 = +5
    assert claim["right_mean"] == pytest.approx(control_miou)
    assert claim["excess_points"] == pytest.approx({"paradigm_d": 1.0, "paradigm_d_long": 5.0}[chosen])
    # no teacher recipe ran: the teacher claims are left out, not evaluated against a missing row
    assert not any("its teacher" in c["claim"] for c in doc["claims"])


def test_weather_rows_summarised_per_condition():
    seeds = {s: _seed_metrics({"teacher_adapted": 0.4}) for s in (0, 1)}
    seeds[0]["teacher_adapted"]["weather"] = {"fog": 0.30, "night": 0.10}
    seeds[1]["teacher_adapted"]["weather"] = {"fog": 0.20, "night": 0.10}
    rows = tuple(r for r in bench_rows.ROWS if r.key == "teacher_adapted")
    doc = report.summarise(seeds, rows)
    assert doc["rows"]["teacher_adapted"]["weather"]["fog"]["mean"] == pytest.approx(0.25)
    assert "| teacher, adapted (AdaptSegNet) (`teacher_adapted`) | 25.00 ± 7.07 | 10.00 ± 0.00 |" in report.markdown_weather(doc)


def test_select_rows_keeps_the_baselines_and_names_unknown_groups():
    rows = results.select_rows(("method",))
    assert {r.group for r in rows} == {"baseline", "method"}
    assert [r.key for r in rows if r.group == "method"] == [
        "student_advent", "student_road", "student_road_batch_bn", "student_diga", "teacher_diga", "student_sfda"]
    assert len([r for r in rows if r.group == "baseline"]) == 6
    assert results.select_rows(None) == results.ROWS
    # a group that distils brings every teacher candidate, whatever its group, so the teacher
    # chosen on tune (and every row it distils) does not depend on the other groups named
    ablation = [r.key for r in results.select_rows(("ablation",))]
    assert [k for k in ablation if k.startswith("teacher_")] == [
        "teacher_source_only", "teacher_adapted", "teacher_adapted_photometric", "teacher_diga"]
    assert "teacher_adabn" not in ablation and "student_diga" not in ablation
    assert [r.key for r in results.select_rows(("realtime",)) if r.group != "baseline"] == [
        "teacher_adapted_photometric", "teacher_diga", "rt_source_only", "rt_dakd", "rt_cwd", "rt_lad", "rt_border"]
    with pytest.raises(ConfigError, match="--groups: realtim not among baseline, control, paradigm, ablation, method, realtime"):
        results.select_rows(("paradigm", "realtim"))


def test_results_tiny_end_to_end(tmp_path, mlflow_uri, monkeypatch):
    """`dakd bench results --size tiny` trains, evaluates on val and writes JSON, Markdown, plots.

    The rows are cut to the baselines and paradigms c, d (d continues from c) to keep the smoke
    short; every other row is a DistillConfig override of the same code path."""
    rows = tuple(r for r in bench_rows.ROWS if r.group == "baseline" and r.key != "student_photometric"
                 or r.key in ("paradigm_c", "paradigm_d", "student_sfda", "rt_source_only", "rt_cwd",
                              "student_continued", "student_continued_d", "student_adabn", "paradigm_c_checkpoint_bn",
                              "paradigm_d_long", "student_continued_d_long"))
    monkeypatch.setattr(bench_rows, "ROWS", rows)  # select_rows(None): every row of ROWS
    # the real-time rows' own pretraining and distillation budgets (tiny's shared ones: 2 and 2)
    monkeypatch.setitem(results.PRESETS, "tiny", dataclasses.replace(
        results.PRESETS["tiny"], it_distill_realtime=3, it_pretrain_realtime=4))
    docs, js = tmp_path / "docs", tmp_path / "docs" / "results.json"
    argv = ["bench", "results", "--size", "tiny", "--seeds", "1", "--out", str(tmp_path / "work"),
            "--docs", str(docs), "--json", str(js)]
    assert dakd_main(argv) == 0
    doc = json.loads(js.read_text())
    assert list(doc["rows"]) == [r.key for r in rows]
    for key, row in doc["rows"].items():
        assert 0.0 <= row["miou"]["mean"] <= 1.0 and row["miou"]["std"] == 0.0, key
        assert set(row["per_class_iou"]) == set(CLASS_NAMES)
    assert doc["rows"]["teacher_adapted"]["num_parameters"] == doc["rows"]["paradigm_c"]["num_parameters"]  # tiny/tiny
    assert doc["val_manifests"]["0"].endswith("/datasets/tgt/val/manifest.parquet")
    assert doc["data_seeds"] == {"0": 0}
    # every row also at its last checkpoint, and with the tune mIoU that selected it
    assert all(0.0 <= r["miou_last"]["mean"] <= 1.0 and 0.0 <= r["tune_miou"]["mean"] <= 1.0
               for r in doc["rows"].values())
    tune = {k: doc["rows"][k]["tune_miou"]["mean"] for k in ("paradigm_c", "paradigm_d", "paradigm_d_long")}
    assert doc["chosen_paradigm"] == max(tune, key=tune.get)
    # the controls: no teacher, the distillation schedule, from the adapted student (continued) and
    # from continued's tune-selected checkpoint (_d); the BN-only student adapts with λ_adv 0
    runs = tmp_path / "work/store/runs/seed0"
    cont = load_checkpoint(str(runs / "distill_student_continued/best.pt"))["config"]
    assert (cont["paradigm"], cont["teacher_cache"], cont["iterations"]) == ("none", None, 2)
    assert cont["init"].endswith("adapt_student/best.pt")
    assert load_checkpoint(str(runs / "distill_student_continued_d/best.pt"))["config"]["init"].endswith(
        "distill_student_continued/best.pt")
    # the 4x budget (tiny's it_distill is 2): (d) from (c), its control from student_continued
    for key, init in (("paradigm_d_long", "distill_paradigm_c"), ("student_continued_d_long", "distill_student_continued")):
        cfg = load_checkpoint(str(runs / f"distill_{key}/best.pt"))["config"]
        assert (cfg["iterations"], cfg["init"].endswith(f"{init}/best.pt")) == (8, True), key
    assert load_checkpoint(str(runs / "distill_paradigm_d_long/best.pt"))["config"]["paradigm"] == "d"
    # (c) before per-domain statistics: its own cache, source labelled with the checkpoint's statistics
    caches = {k: load_checkpoint(str(runs / f"distill_{k}/best.pt"))["config"]["teacher_cache"]
              for k in ("paradigm_c", "paradigm_c_checkpoint_bn")}
    assert caches["paradigm_c"].endswith("/teacher_cache/seed0_teacher_adapted/index.parquet")
    assert caches["paradigm_c_checkpoint_bn"].endswith("/teacher_cache/seed0_teacher_adapted_checkpoint_bn/index.parquet")
    adabn = load_checkpoint(str(runs / "adapt_student_adabn/best.pt"))["config"]
    assert (adabn["lambda_adv_main"], adabn["lambda_adv_aux"], adabn["iterations"]) == (0.0, 0.0, 2)
    # class pixel shares of both labelled train sets: fractions summing to 1, road present in both
    for domain in ("source", "target"):
        shares = doc["class_pixel_shares"][domain]
        assert set(shares) == set(CLASS_NAMES) and sum(shares.values()) == pytest.approx(1.0)
        assert shares["road"] > 0.05
    assert "## The pair: per-class pixel shares (%)" in (docs / "results.md").read_text()
    # selection ran on tune, never on val: every stage selected on the seed's tune manifest, and the
    # tune mIoU the table reports is the one its stage selected the checkpoint with
    tune_uri = doc["tune_manifests"]["0"]
    assert tune_uri.endswith("/datasets/tgt/tune/manifest.parquet") and tune_uri != doc["val_manifests"]["0"]
    for key in ("paradigm_d", "student_adapted", "student_continued"):
        stage = {"paradigm_d": "distill_paradigm_d", "student_adapted": "adapt_student",
                 "student_continued": "distill_student_continued"}[key]
        result = json.loads((tmp_path / f"work/store/runs/seed0/{stage}/result.json").read_text())
        assert load_checkpoint(result["best_checkpoint_uri"])["config"]["select_manifest"] == tune_uri
        assert doc["rows"][key]["tune_miou"]["mean"] == result["metrics"]["select/best_miou"]
    steps = {stage: json.loads((tmp_path / f"work/store/runs/seed0/{stage}/result.json").read_text())["metrics"]["steps"]
             for stage in ("pretrain_student", "distill_paradigm_c", "pretrain_rt", "distill_rt_cwd")}
    assert steps == {"pretrain_student": 2, "distill_paradigm_c": 2, "pretrain_rt": 4, "distill_rt_cwd": 3}
    md = (docs / "results.md").read_text()
    assert "dakd bench results --size tiny --seeds 1" in md
    assert "(d) target, from (c) (`paradigm_d`)" in md and "| (d) >= (c) |" in md
    # only the claims whose two rows ran
    assert [c["claim"] for c in doc["claims"]] == [
        "adapted > source-only (teacher)", "adapted > source-only (student)", "(c) > undistilled student",
        "(d) > undistilled student", "(c) >= teacher", "(d) >= teacher", "(d) >= (c)",
        "SFDA, no source data > source-only (student)", "adapted teacher >= source-only teacher + 5",
        "adapted student > its BN-statistics-only control",
        "DAKD student (paradigm chosen on tune) >= the same budget without a teacher + 2",
        "DAKD student (paradigm chosen on tune) >= its teacher - 1",
        "DAKD student (paradigm chosen on tune) >= its teacher",
        "(c) >= adapted student + 2",
        "(c): source labelled with source BN statistics > with the teacher's target ones",
        "adapted teacher >= 35 % mIoU",
        "source-only student (end of training) >= 60 % mIoU on source val", "target oracle > adapted teacher"]
    assert 0.0 <= doc["rows"]["student_source_only"]["source_val_miou"]["mean"] <= 1.0
    assert 0.0 <= doc["rows"]["student_source_only"]["source_val_last_miou"]["mean"] <= 1.0
    assert "On held-out **source** val images" in (docs / "results.md").read_text()
    # the oracle trained on the labelled target train split (a manifest of its own)
    oracle = load_checkpoint(str(tmp_path / "work/store/runs/seed0/pretrain_oracle/best.pt"))["config"]
    assert oracle["source_manifest"].endswith("/datasets/tgt_labelled/train/manifest.parquet")
    assert doc["rows"]["rt_cwd"]["num_parameters"] != doc["rows"]["paradigm_c"]["num_parameters"]  # SwiftNet
    # the source-free row saw no source manifest; the weather target was evaluated per condition
    sfda = load_checkpoint(str(tmp_path / "work/store/runs/seed0/adapt_student_sfda/best.pt"))["config"]
    assert sfda["method"] == "sfda" and sfda["source_manifest"] is None
    assert set(doc["rows"]["paradigm_d"]["weather"]) == {"fog", "night", "rain", "snow"}
    assert "## Adverse weather: mIoU (%) per condition" in md
    for name in ("results_miou.png", "results_per_class.png"):
        assert (docs / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses every finished stage (same config hash) and gives the same table
    before = {k: r["miou"]["mean"] for k, r in doc["rows"].items()}
    assert dakd_main(argv) == 0
    assert {k: r["miou"]["mean"] for k, r in json.loads(js.read_text())["rows"].items()} == before


def test_real_time_source_only_row_alone_adapts_and_caches_no_teacher(tmp_path, mlflow_uri):
    """rt_source_only is in the "realtime" group but is not distilled: run without a distillation
    row, a seed trains no adapted teacher and writes no teacher cache (tune_choices.py realtime)."""
    p = results.PRESETS["tiny"]
    store = (tmp_path / "store").as_uri()
    manifests = results.prepare_data(p, tmp_path, store)
    rows = tuple(r for r in bench_rows.ROWS if r.key in ("teacher_source_only", "student_source_only", "rt_source_only"))
    ckpt = results.run_seed(p, 0, manifests, store, "cpu", rows)
    assert set(ckpt) == {"teacher_source_only", "student_source_only", "rt_source_only"}
    assert sorted(d.name for d in (tmp_path / "store" / "runs" / "seed0").iterdir()) == [
        "pretrain_rt", "pretrain_student", "pretrain_teacher"]
    assert not (tmp_path / "store" / "teacher_cache").exists()


def test_results_seeds_in_more_processes_than_cores_share_the_cores(tmp_path, mlflow_uri, monkeypatch):
    """--jobs 3 on a (pretend) 2-core machine: three seed processes, two compute slots."""
    rows = tuple(r for r in bench_rows.ROWS if r.key in ("teacher_source_only", "student_source_only",
                                                         "teacher_adapted", "student_adapted"))
    monkeypatch.setattr(bench_rows, "ROWS", rows)
    monkeypatch.setattr(results.os, "sched_getaffinity", lambda pid: {0, 1})
    docs, js = tmp_path / "docs", tmp_path / "docs" / "results.json"
    assert dakd_main(["bench", "results", "--size", "tiny", "--seeds", "3", "--jobs", "3", "--out",
                      str(tmp_path / "work"), "--docs", str(docs), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert (doc["jobs"], doc["compute_slots"]) == (3, 2)
    # each seed drew its own pair: its own val set, other images
    vals = doc["val_manifests"]
    assert vals["0"].endswith("/datasets/tgt/val/manifest.parquet") and vals["2"].endswith(
        "/datasets/tgt_s2/val/manifest.parquet") and len(set(vals.values())) == 3
    work = tmp_path / "work"
    first = sorted((work / "raw_tgt/leftImg8bit/val").rglob("*.png"))[0]
    other = work / "data_seed1" / first.relative_to(work)
    assert other.exists() and other.read_bytes() != first.read_bytes()
    assert all(set(row["miou_per_seed"]) == {"0", "1", "2"} for row in doc["rows"].values())
    assert "(seeds trained in 3 parallel process(es), at most 2 stage(s) computing at once)" in (
        docs / "results.md").read_text()


def test_bad_size_and_seeds_are_config_errors(tmp_path, capsys):
    assert dakd_main(["bench", "results", "--size", "huge", "--out", str(tmp_path / "w"),
                      "--docs", str(tmp_path / "d"), "--json", str(tmp_path / "d/r.json")]) == 2
    assert "--size: 'huge' is not one of tiny, demo, results" in capsys.readouterr().err
    assert dakd_main(["bench", "results", "--size", "tiny", "--seeds", "0", "--out", str(tmp_path / "w"),
                      "--docs", str(tmp_path / "d"), "--json", str(tmp_path / "d/r.json")]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # nothing published


def test_perf_table_goals_on_given_numbers():
    ingest = {"cityscapes": {"rates": {1: {"raw": 10.0, "thread": 9.0, "process": 9.0},
                                       2: {"raw": 16.0, "thread": 15.0, "process": 11.0}},
                             "cpu_s_per_img": {"raw": 0.005, "ingest": 0.004}}}
    loader = {"rates": {1: 20.0, 2: 30.0}, "cores": 2}
    train = {"device": "cpu", "rows": [{"model": "m", "bare_img_s": 4.0, "dakd_img_s": 3.8, "dakd_over_bare": 0.95},
                                       {"model": "n", "bare_img_s": 4.0, "dakd_img_s": 5.2, "dakd_over_bare": 1.3}]}
    distill = {"teacher": "T", "student": "S", "cached_over_alone": 1.2, "live_over_cached": 2.0, "clock": "cpu",
               "step_seconds_cached": 1.2, "step_seconds_alone": 1.0, "step_seconds_live": 2.4,
               "cache_uint8_bytes_per_image_vs_fp32_maps": 0.2, "cache_fp16_bytes_per_image_vs_fp32_maps": 0.45}
    export = {"device": "cpu", "resolution": [32, 64], "evaluation_mpx_s": 1.5,
              "throughput_img_s": {"student_onnx_fp16": 5.0, "student_onnx_fp32": 10.0},
              "ratios": {"student_onnx_fp16 / student_onnx_fp32": 0.5}}
    rows = {r.measure: r for r in perf_rows(ingest, loader, train, distill, export)}
    status = {k: r.status for k, r in rows.items()}
    # raw 5 ms vs ingest 4 ms per image: ingest "beats" its limit by 1.25x > 1.2 -> the limit is no limit
    work = rows["cityscapes, 1 worker: raw loop / ingest, CPU seconds per image"]
    assert work.value == pytest.approx(1.25) and work.status == "NOT met" and work.detail == "5.00 vs 4.00 ms"
    # speed-ups 1->2: raw 16/10 = 1.6; threads 15/9 = 1.667 -> 1.04 of the raw loop's; processes 11/9 -> 0.76
    threads = rows["cityscapes, thread pool, 1->2 workers: speed-up / raw loop's"]
    assert threads.value == pytest.approx(15 / 9 / 1.6) and threads.status == "met"
    assert rows["cityscapes, process pool, 1->2 workers: speed-up / raw loop's"].value == pytest.approx(11 / 9 / 1.6)
    assert status["cityscapes, process pool, 1->2 workers: speed-up / raw loop's"] == "NOT met"
    stream = rows["training stream, 1->2 workers: speed-up"]
    assert stream.value == pytest.approx(1.5) and stream.detail == "20.0 -> 30.0 img/s; ideal x2 on 2 cores"
    assert status["m: dakd pretrain step / bare PyTorch loop (throughput)"] == "met"
    assert status["n: dakd pretrain step / bare PyTorch loop (throughput)"] == "NOT met"  # 1.3 > 1.2: beats its limit
    assert status["step from the cache / student alone (T -> S)"] == "NOT met"  # 1.2 > 1.15
    assert rows["step from the cache / student alone (T -> S)"].detail == "1.200 vs 1.000 cpu s"
    # live / cached: the 1.8 goal belongs to R101 -> R18 only
    assert status["step with the live teacher / from the cache (T -> S)"] == "(no goal)"
    paper = perf_rows(ingest, loader, train, dict(distill, teacher="deeplabv2_resnet101", student="deeplabv2_resnet18",
                                                  live_over_cached=1.7), export)
    live = next(r for r in paper if r.measure.startswith("step with the live teacher"))
    assert live.goal == ">= 1.8" and live.status == "NOT met"
    assert status["uint8 cache bytes / fp32 main+aux maps"] == "met"
    assert status["student_onnx_fp16 / student_onnx_fp32 throughput"] == "(no goal)"  # CPU: no FP16 goal
    assert "| evaluate | evaluation throughput (predict + metrics) | 1.500 Mpx/s |" in markdown_table(list(rows.values()))
    assert PerfRow("x", "y", 2.0, "x", ">= 1.5").status == "met"
    assert [PerfRow("x", "y", v, "x", "0.8 to 1.2").status for v in (0.79, 0.8, 1.2, 1.21)] == [
        "NOT met", "met", "met", "NOT met"]


def test_perf_report_keeps_the_sections_below_its_marker(tmp_path, monkeypatch):
    """`dakd bench perf` rewrites its table but keeps what other commands recorded below the marker."""
    from dakd_core.bench import perf

    out = tmp_path / "performance.md"
    out.write_text(f"# old table\n\n{perf.KEEP_MARKER}\n\n## GPU suite\n\nno GPU lent\n")
    fixed = {"ingest": {}, "loader": {"rates": {1: 2.0}, "cores": 1},
             "train": {"device": "cpu", "rows": []},
             "distill": {"teacher": "T", "student": "S", "cached_over_alone": 1.0, "live_over_cached": 2.0,
                         "step_seconds_cached": 1.0, "step_seconds_alone": 1.0, "step_seconds_live": 2.0,
                         "cache_uint8_bytes_per_image_vs_fp32_maps": 0.2, "cache_fp16_bytes_per_image_vs_fp32_maps": 0.4},
             "export": {"device": "cpu", "resolution": [8, 8], "evaluation_mpx_s": 1.0, "throughput_img_s": {},
                        "ratios": {}}}

    class Fake:
        def __getattr__(self, fn):
            return lambda argv, _name=self.name: fixed[_name]

    def fake_load(module):
        bench = Fake()
        bench.__dict__["name"] = next(n for n, m, _ in perf.BENCHMARKS if m == module)
        return bench

    monkeypatch.setattr(perf, "load_benchmark", fake_load)
    perf.run_perf(quick=True, out=out, json_path=None, command="dakd bench perf --quick")
    text = out.read_text()
    assert "# old table" not in text and "`dakd bench perf --quick`" in text
    assert text.count(perf.KEEP_MARKER) == 1 and text.endswith("## GPU suite\n\nno GPU lent\n")
    assert "| distill | step from the cache / student alone (T -> S) | 1.00x | 0.85 to 1.15 | met |" in text


def test_stopwatch_counts_cpu_work_of_reaped_children_not_sleep():
    import subprocess
    import sys
    import time

    from dakd_core.bench.clock import Stopwatch

    with Stopwatch() as idle:
        time.sleep(0.3)
    assert idle.wall >= 0.3 and idle.cpu < 0.1  # waiting (as for a busy machine's queue) is no work
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    with Stopwatch() as child:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert child.cpu >= 0.4 and child.wall >= 0.4  # the child's 0.4 CPU seconds count once it is reaped

