"""Output-space adversarial adaptation (AdaptSegNet / ADVENT) of one network from its pretrain
checkpoint."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import hw, run_identity, run_prefix, tracked
from dakd_core.orchestration.tasks.pretrain import train_outputs, training_common
from dakd_core.orchestration.pins import resolve


def adapt_fields(*, init: str, target_manifest: str, target_resize: list, method: str,
                 lambda_adv_main: float, lambda_adv_aux: float, discriminator_width: int = 64) -> dict:
    """AdaptConfig fields beyond TrainConfig (also used by distillation, which keeps its own DA)."""
    return dict(init=resolve(init), target_manifest=resolve(target_manifest),
                target_resize=hw(target_resize), method=method,
                lambda_adv_main=lambda_adv_main, lambda_adv_aux=lambda_adv_aux, d_ndf=int(discriminator_width))


@tracked("adapt", lambda kw: run_identity(kw["role"], method=kw["method"]))
def adapt_task(*, store_uri: str, run_name: str, experiment: str, role: str, init: str,
               target_manifest: str, target_resize: list, method: str, lambda_adv_main: float,
               lambda_adv_aux: float, discriminator_width: int = 64, gpus_per_task: int = 1, **train) -> dict:
    from dakd_core.config import build_config
    from dakd_core.orchestration.launch import run_stage
    from dakd_core.train import adapt
    from dakd_core.train.configs import AdaptConfig

    out = f"{run_prefix(store_uri, run_name)}/adapt_{role}"
    cfg = build_config(
        AdaptConfig,
        **training_common(out=out, **train),
        **adapt_fields(init=init, target_manifest=target_manifest, target_resize=target_resize,
                       method=method, lambda_adv_main=lambda_adv_main, lambda_adv_aux=lambda_adv_aux,
                       discriminator_width=discriminator_width),
    )
    return train_outputs(run_stage("adapt", cfg, gpus_per_task, adapt.run), cfg.model)
