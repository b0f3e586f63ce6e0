"""The rows of `dakd bench results`, in table order: one module that the runner (results.py) and the
report (report.py) both read, so neither imports the other for them.

A row is trained by its group's rule (dakd_core/bench/results.py `run_seed`):
- baseline: pretrain / adapt once per seed (the stages every other row starts from);
- control: the same stages with one cause removed (no adversary, no teacher): what a gain must beat;
- paradigm / ablation: `dakd distill` from the adapted student with the row's DistillConfig overrides;
- method: `dakd adapt --method ...` from the student's source-only checkpoint;
- realtime: the real-time student, source-only then distilled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dakd_core.errors import ConfigError


@dataclass(frozen=True)
class Row:
    key: str
    group: str  # "baseline" | "control" | "paradigm" | "ablation" | "method" | "realtime"
    label: str
    overrides: dict = field(default_factory=dict)  # DistillConfig fields; AdaptConfig fields for "method" rows


# λ_adv 0: the adaptation stage's own steps, schedule and target batches (which set the BatchNorm
# running statistics), without the adversary.
NO_ADVERSARY = {"lambda_adv_main": 0.0, "lambda_adv_aux": 0.0}
PARADIGMS = ("paradigm_a", "paradigm_b", "paradigm_c", "paradigm_d", "paradigm_d_long")
# `budget` in a distillation row's overrides: its iterations as a multiple of the preset's it_distill
# (results.py), so a row keeps its meaning at every preset size.

# The table rows, in order. Ablations are on paradigm c (source + target) so that lambda_target acts.
ROWS = (
    Row("teacher_source_only", "baseline", "teacher, source only"),
    Row("student_source_only", "baseline", "student, source only"),
    # what a practitioner tries first against an appearance shift: colour augmentation, no target data
    Row("student_photometric", "baseline", "student, source only + photometric augmentation", {"photometric": True}),
    # the upper bound: the student network trained on the LABELLED target train images
    Row("target_oracle", "baseline", "student trained on labelled target (oracle)"),
    Row("teacher_adapted", "baseline", "teacher, adapted (AdaptSegNet)"),
    Row("student_adapted", "baseline", "student, adapted (no distillation)"),
    # the teacher recipe of modern UDA: adaptation on top of strong source augmentation; the teacher
    # that distils is the one of the two recipes that scores higher on the tune split (per seed)
    Row("teacher_adapted_photometric", "control", "teacher, adapted (AdaptSegNet) + photometric augmentation",
        {"photometric": True}),
    # BatchNorm re-estimation alone: the adaptation stage with λ_adv 0 (same steps, target statistics)
    Row("teacher_adabn", "control", "teacher, BN statistics on target only (adapt with λ_adv 0)", NO_ADVERSARY),
    Row("student_adabn", "control", "student, BN statistics on target only (adapt with λ_adv 0)", NO_ADVERSARY),
    # "just train longer": the adapted student trained the distillation budget again without a
    # teacher (same schedule, augmentation, discriminators); _d twice, the budget of (d) = c then d
    Row("student_continued", "control", "adapted student + the distillation budget, no teacher",
        {"paradigm": "none"}),
    Row("student_continued_d", "control", "adapted student + twice the distillation budget, no teacher",
        {"paradigm": "none"}),
    Row("student_continued_d_long", "control", "adapted student + 5x the distillation budget, no teacher",
        {"paradigm": "none", "budget": 4}),
    Row("paradigm_a", "paradigm", "(a) distil on source", {"paradigm": "a"}),
    Row("paradigm_b", "paradigm", "(b) distil on target", {"paradigm": "b"}),
    Row("paradigm_c", "paradigm", "(c) distil on source + target", {"paradigm": "c"}),
    Row("paradigm_d", "paradigm", "(d) target, from (c)", {"paradigm": "d"}),
    # the budget as a choice on tune: every (c) and (d) stage of the first evidence run selected its
    # last checkpoint on tune (still learning when the budget ended, docs/results.md)
    Row("paradigm_d_long", "paradigm", "(d) target, from (c), 4x the budget", {"paradigm": "d", "budget": 4}),
    Row("kl_only", "ablation", "(c) L_KL only", {"paradigm": "c", "lambda_mse": 0.0, "lambda_pseudo": 0.0}),
    Row("mse_only", "ablation", "(c) L_MSE only", {"paradigm": "c", "lambda_kl": 0.0, "lambda_pseudo": 0.0}),
    Row("pseudo_only", "ablation", "(c) L_pseudoT only", {"paradigm": "c", "lambda_kl": 0.0, "lambda_mse": 0.0}),
    Row("lambda_target_0.1", "ablation", "(c) lambda_target 0.1", {"paradigm": "c", "lambda_target": 0.1}),
    Row("lambda_target_0.5", "ablation", "(c) lambda_target 0.5", {"paradigm": "c", "lambda_target": 0.5}),
    # the teacher cache before per-domain statistics: source images labelled with the adapted
    # teacher's own running statistics, which are the target domain's (issue 29)
    Row("paradigm_a_checkpoint_bn", "ablation", "(a), source labelled with the teacher's target BN statistics",
        {"paradigm": "a"}),
    Row("paradigm_c_checkpoint_bn", "ablation", "(c), source labelled with the teacher's target BN statistics",
        {"paradigm": "c"}),
    # issue 17: KL summed over the classes (19x the default class mean at the same lambda_kl)
    Row("kl_class_mean", "ablation", "(c) KL averaged over classes (reference code's scale)",
        {"paradigm": "c", "kl_reduction": "class_mean"}),
    # the other adaptation methods, on the student from the same source-only checkpoint and budget
    Row("student_advent", "method", "student, adapted (ADVENT)", {"method": "advent"}),
    # no ImageNet weights at this scale: the reference is the source-trained init (docs/methods.md)
    Row("student_road", "method", "student, adapted (ROAD)", {"method": "road", "road_reference": "init"}),
    # the control of ROAD's L_dist target: the init reference normalises the target crops with their
    # own batch statistics (as the student's features do) instead of its source running averages
    Row("student_road_batch_bn", "method", "student, adapted (ROAD), reference on target batch statistics",
        {"method": "road", "road_reference": "init", "road_reference_statistics": "batch"}),
    Row("student_diga", "method", "student, adapted (DiGA)", {"method": "diga"}),
    # DiGA's self-training as the teacher's method (a candidate teacher recipe, issue 29)
    Row("teacher_diga", "method", "teacher, adapted (DiGA)", {"method": "diga"}),
    # lr 1e-3, not the networks' 1e-2: with no source loss to anchor it, max squares at AdamW 1e-2
    # collapses to a few classes (tune split, seed 10, 100 steps from a 31.55 % source-only student:
    # 6.46 % at lr 1e-2, 31.95 % at 1e-3; the paper adapts at its pretraining lr, 2.5e-4 SGD)
    Row("student_sfda", "method", "student, adapted source-free (SFDA)", {"method": "sfda", "lr": 1e-3}),
    # the real-time student (seed 004): source-only, then distilled in paradigm (c) with DAKD's
    # losses alone and with each of the thesis' additions (feature losses need the live teacher)
    Row("rt_source_only", "realtime", "real-time student, source only"),
    Row("rt_dakd", "realtime", "real-time student, DAKD (c)", {"paradigm": "c"}),
    Row("rt_cwd", "realtime", "real-time student, DAKD (c) + CWD",
        {"paradigm": "c", "lambda_cwd": 1.0, "teacher_online": True}),
    Row("rt_lad", "realtime", "real-time student, DAKD (c) + LAD",
        {"paradigm": "c", "lambda_lad": 1.0, "teacher_online": True}),
    Row("rt_border", "realtime", "real-time student, DAKD (c) + border-focal CE + border KL",
        {"paradigm": "c", "seg_loss": "border_focal", "lambda_border_kl": 0.1}),
)
# "Just train longer" (no teacher): each control, the row its init comes from, and the paradigm rows
# whose budget it matches ((d) continues from (c), so its control continues from student_continued).
CONTINUED_CONTROLS = (
    ("student_continued", "student_adapted", ("paradigm_a", "paradigm_b", "paradigm_c")),
    ("student_continued_d", "student_continued", ("paradigm_d",)),
    ("student_continued_d_long", "student_continued", ("paradigm_d_long",)),
)
# Rows also evaluated per weather condition when the preset renders a weather target.
WEATHER_ROWS = ("teacher_adapted", "student_adapted", "paradigm_c", "paradigm_d")
# Rows also evaluated on held-out source images (a network that has not learned its own domain
# makes every adaptation gain look larger than it is).
SOURCE_VAL_ROWS = ("teacher_source_only", "student_source_only")
# The control rows trained by the adapt stage (the other controls continue the distill stage).
ADAPT_CONTROLS = ("teacher_adapted_photometric", "teacher_adabn", "student_adabn")
# Rows distilled from a cache whose source images were labelled with the checkpoint's statistics.
CHECKPOINT_BN_ROWS = ("paradigm_a_checkpoint_bn", "paradigm_c_checkpoint_bn")
# The candidate teachers of the distillation rows, chosen per seed on the tune split.
TEACHER_RECIPES = ("teacher_adapted", "teacher_adapted_photometric", "teacher_diga")
ROW_KEYS = tuple(r.key for r in ROWS)
GROUPS = tuple(dict.fromkeys(r.group for r in ROWS))


def distils(row: Row) -> bool:
    """Whether the row is trained by distillation from the chosen teacher (and so needs the adapted
    networks, the teacher candidates and a teacher cache). The real-time student's source-only row,
    though in the "realtime" group, is not."""
    return row.group in ("paradigm", "ablation", "realtime") and row.key != "rt_source_only"


def select_rows(groups: tuple[str, ...] | None) -> tuple[Row, ...]:
    """The rows of `groups` (None: all); the baselines always run, every claim is stated against them.
    Where a selected row distils, every teacher candidate (TEACHER_RECIPES) runs too, whatever its
    group: the teacher is chosen on tune among all of them, so the rows a group distils do not depend
    on which other groups run in the same invocation."""
    if groups is None:
        return ROWS
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ConfigError(f"--groups: {', '.join(unknown)} not among {', '.join(GROUPS)}")
    selected = [r for r in ROWS if r.group == "baseline" or r.group in groups]
    if any(distils(r) for r in selected):
        selected += [r for r in ROWS if r.key in TEACHER_RECIPES]
    return tuple(r for r in ROWS if r in selected)
