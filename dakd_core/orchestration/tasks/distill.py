"""DAKD distillation of the adapted student from the cached adapted teacher.

Paradigm d is b started from a paradigm-c checkpoint, so the pipeline runs this component twice
for d: stage "first" trains c (or the chosen a/b/c), stage "second" trains d from it."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import hw, run_identity, run_prefix, tracked
from dakd_core.orchestration.tasks.adapt import adapt_fields
from dakd_core.orchestration.tasks.pretrain import train_outputs, training_common
from dakd_core.errors import ConfigError
from dakd_core.orchestration.pins import resolve


def stage_paradigm(paradigm: str, stage: str) -> str:
    """The paradigm one distill task trains: for d, c first and d second."""
    if stage == "first":
        return "c" if paradigm == "d" else paradigm
    if stage == "second" and paradigm == "d":
        return "d"
    raise ConfigError(f"stage: '{stage}' with paradigm '{paradigm}' (a second stage exists only for d)")


def _identity(kw: dict) -> tuple[str, dict]:
    """distill-student-c / distill-student-d: paradigm d runs this task twice (c, then d)."""
    paradigm = stage_paradigm(kw["paradigm"], kw["stage"])
    label, tags = run_identity("student", method="dakd", paradigm=paradigm, label=f"student-{paradigm}")
    # the student's own adversarial DA while distilling (adaptsegnet | advent)
    return label, {**tags, "dakd.adversarial_method": kw["method"]}


@tracked("distill", _identity)
def distill_task(*, store_uri: str, run_name: str, experiment: str, paradigm: str, stage: str,
                 teacher: str, cache_index: str, init: str, target_manifest: str, target_resize: list,
                 method: str, lambda_adv_main: float, lambda_adv_aux: float, lambda_kl: float,
                 lambda_kl_aux: float, lambda_mse: float, lambda_pseudo: float, lambda_target: float,
                 temperature: float, kl_reduction: str = "class_sum", seg_loss: str = "ce", focal_gamma: float = 2.0,
                 lambda_border_kl: float = 0.0, lambda_l2_feature: float = 0.0, lambda_cwd: float = 0.0,
                 cwd_tau: float = 4.0, lambda_lad: float = 0.0, feature_level: str = "last",
                 teacher_online: bool = False, discriminator_width: int = 64, gpus_per_task: int = 1,
                 **train) -> dict:
    from dakd_core.config import build_config
    from dakd_core.orchestration.launch import run_stage
    from dakd_core.train import distill
    from dakd_core.train.distill_config import DistillConfig

    run_paradigm = stage_paradigm(paradigm, stage)
    out = f"{run_prefix(store_uri, run_name)}/distill_{run_paradigm}"
    cfg = build_config(
        DistillConfig,
        **training_common(out=out, **train),
        **adapt_fields(init=init, target_manifest=target_manifest, target_resize=target_resize, method=method,
                       lambda_adv_main=lambda_adv_main, lambda_adv_aux=lambda_adv_aux,
                       discriminator_width=discriminator_width),
        paradigm=run_paradigm, teacher=resolve(teacher), teacher_cache=resolve(cache_index),
        lambda_kl=lambda_kl, lambda_kl_aux=lambda_kl_aux, lambda_mse=lambda_mse,
        lambda_pseudo=lambda_pseudo, lambda_target=lambda_target, temperature=temperature,
        kl_reduction=kl_reduction,
        # issue 9: real-time students' losses (defaults leave DAKD unchanged)
        seg_loss=seg_loss, focal_gamma=focal_gamma, lambda_border_kl=lambda_border_kl,
        lambda_l2_feature=lambda_l2_feature, lambda_cwd=lambda_cwd, cwd_tau=cwd_tau, lambda_lad=lambda_lad,
        feature_level=feature_level, teacher_online=teacher_online,
    )
    return {**train_outputs(run_stage("distill", cfg, gpus_per_task, distill.run), cfg.model),
            "paradigm": run_paradigm}
