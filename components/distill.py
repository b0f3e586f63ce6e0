"""DAKD distillation of the adapted student (`init`) from the cached adapted teacher (`teacher`),
both Models of upstream tasks. `config`: the stage's settings from `start` (JSON; paradigm d runs
it twice: c, then d initialised from the c task's Model)."""

from typing import NamedTuple

from kfp.dsl import Input, Metrics, Model, Output

from components._base import cpu_component, gpu_component


@gpu_component
def distill(
    store_uri: str, experiment: str, config: str, teacher: Input[Model], cache_index: str, init: Input[Model],
    source_manifest: str, target_manifest: str, kfp_task: str, metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.artifacts import pinned, publish
    from dakd_core.orchestration.tasks.common import log_metrics
    from dakd_core.orchestration.tasks.distill import distill_task

    out = distill_task(store_uri=store_uri, experiment=experiment, config=config, teacher=pinned(teacher),
                       cache_index=cache_index, init=pinned(init), source_manifest=source_manifest,
                       target_manifest=target_manifest, kfp_task=kfp_task)
    log_metrics(metrics, out["metrics"])
    publish(model, out["checkpoint"], network=out["network"], stage="distill", paradigm=out["paradigm"])
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])


@cpu_component
def passthrough(model: Input[Model], distilled: Output[Model]):
    """The Else branch of paradigm d: hands the first distill task's Model on unchanged (same
    pinned checkpoint, same metadata), so that dsl.OneOf has one Model per branch."""
    from dakd_core.orchestration.tasks.artifacts import PINNED_URI, pinned, publish

    publish(distilled, pinned(model), **{k: v for k, v in model.metadata.items() if k != PINNED_URI})
