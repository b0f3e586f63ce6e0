"""Source-only pretraining of one network (teacher or student)."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import gpu_component, run_prefix, tracked
from dakd_core.orchestration.pins import pin, resolve


def training_common(*, network: str, source_manifest: str, source_resize: list, crop: list,
                    batch_size: int, iterations: int, lr: float, eval_every: int, num_workers: int,
                    seed: int, out: str, experiment: str, mlflow_run_name: str) -> dict:
    """TrainConfig fields every training stage sets from pipeline parameters."""
    return dict(
        model=network, source_manifest=resolve(source_manifest), source_resize=tuple(source_resize),
        crop=tuple(crop), batch_size=batch_size, iterations=iterations, lr=lr, seed=seed, out=out,
        eval_every=eval_every, checkpoint_every=eval_every, num_workers=num_workers,
        mlflow_experiment=experiment, mlflow_run_name=mlflow_run_name,
    )


def train_outputs(result, network: str) -> dict:
    """A TrainResult as task outputs: the best checkpoint pinned to its content."""
    return {"checkpoint": pin(result.best_checkpoint_uri), "network": network,
            "metrics": dict(result.metrics), "mlflow_run_id": result.mlflow_run_id or ""}


@tracked("pretrain")
def pretrain_task(*, store_uri: str, run_name: str, experiment: str, role: str, **train) -> dict:
    from dakd_core.config import build_config
    from dakd_core.train import pretrain
    from dakd_core.train.configs import PretrainConfig

    out = f"{run_prefix(store_uri, run_name)}/pretrain_{role}"
    cfg = build_config(PretrainConfig, **training_common(
        out=out, experiment=experiment, mlflow_run_name=f"pretrain-{role}", **train))
    return train_outputs(pretrain.run(cfg), cfg.model)


@gpu_component
def pretrain(
    store_uri: str, run_name: str, role: str, network: str, source_manifest: str,
    source_resize: list, crop: list, batch_size: int, iterations: int, lr: float, eval_every: int,
    num_workers: int, seed: int, experiment: str, parent_run_id: str, kfp_run_id: str, kfp_task: str,
    metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from components._base import log_metrics
    from components.pretrain import pretrain_task

    out = pretrain_task(
        store_uri=store_uri, run_name=run_name, role=role, network=network,
        source_manifest=source_manifest, source_resize=source_resize, crop=crop, batch_size=batch_size,
        iterations=iterations, lr=lr, eval_every=eval_every, num_workers=num_workers, seed=seed,
        experiment=experiment, parent_run_id=parent_run_id,
        kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    log_metrics(metrics, out["metrics"])
    model.uri = out["checkpoint"].split("#")[0]
    model.metadata.update(network=out["network"], checkpoint=out["checkpoint"], stage="pretrain", role=role)
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])
