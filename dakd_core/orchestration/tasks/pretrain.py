"""Source-only pretraining of one network (teacher or student)."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import hw, run_identity, run_prefix, tracked
from dakd_core.orchestration.pins import pin, resolve


def training_common(*, network: str, source_manifest: str, source_resize: list, crop: list,
                    batch_size: int, iterations: int, lr: float, eval_every: int, num_workers: int,
                    seed: int, out: str, optimizer: str = "network") -> dict:
    """TrainConfig fields every training stage sets from pipeline parameters (the MLflow
    experiment reaches the stage as MLFLOW_EXPERIMENT_NAME, set by the task context). `lr` 0 and
    `optimizer` "network" leave those fields to the network's recipe."""
    recipe = {k: v for k, v in (("lr", lr), ("optimizer", optimizer)) if v not in (0, 0.0, "network")}
    return dict(
        model=network, source_manifest=resolve(source_manifest), source_resize=hw(source_resize),
        crop=hw(crop), batch_size=batch_size, iterations=iterations, seed=seed, out=out,
        eval_every=eval_every, checkpoint_every=eval_every, num_workers=num_workers, **recipe,
    )


def train_outputs(result, network: str) -> dict:
    """A TrainResult as task outputs: the best checkpoint pinned to its content."""
    return {"checkpoint": pin(result.best_checkpoint_uri), "network": network,
            "metrics": dict(result.metrics), "mlflow_run_id": result.mlflow_run_id or ""}


@tracked("pretrain", lambda kw: run_identity(kw["role"], method="source-only"))
def pretrain_task(*, store_uri: str, run_name: str, experiment: str, role: str, backbone_weights: str = "",
                  gpus_per_task: int = 1, **train) -> dict:
    """`backbone_weights` "" trains from random init; a `timm:TAG` is fetched into the store once
    (dakd_core/models/weights.py) and the config records the store URI it read. `gpus_per_task` > 1
    runs the stage under torchrun (dakd_core/orchestration/launch.py)."""
    from dakd_core.config import build_config
    from dakd_core.models.weights import weights_in_store
    from dakd_core.orchestration.launch import run_stage
    from dakd_core.train import pretrain
    from dakd_core.train.configs import PretrainConfig

    out = f"{run_prefix(store_uri, run_name)}/pretrain_{role}"
    weights = {"backbone_weights": weights_in_store(backbone_weights, store_uri)} if backbone_weights else {}
    cfg = build_config(PretrainConfig, **training_common(out=out, **train), **weights)
    return train_outputs(run_stage("pretrain", cfg, gpus_per_task, pretrain.run), cfg.model)
