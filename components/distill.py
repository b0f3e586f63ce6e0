"""DAKD distillation of the adapted student from the cached adapted teacher. `config`: the
stage's settings from `start` (JSON; paradigm d runs it twice: c, then d from the c checkpoint)."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import cpu_component, gpu_component


@gpu_component
def distill(
    store_uri: str, experiment: str, config: str, teacher: str, cache_index: str, init: str,
    source_manifest: str, target_manifest: str, kfp_task: str, metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.common import log_metrics
    from dakd_core.orchestration.tasks.distill import distill_task

    out = distill_task(store_uri=store_uri, experiment=experiment, config=config, teacher=teacher,
                       cache_index=cache_index, init=init, source_manifest=source_manifest,
                       target_manifest=target_manifest, kfp_task=kfp_task)
    log_metrics(metrics, out["metrics"])
    model.uri = out["checkpoint"].split("#")[0]
    model.metadata.update(network=out["network"], checkpoint=out["checkpoint"], stage="distill",
                          paradigm=out["paradigm"])
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])


@cpu_component
def passthrough(value: str) -> str:
    """The Else branch of paradigm d: hands the first distill checkpoint on unchanged, so that
    dsl.OneOf has one output per branch."""
    return value
