"""Teacher pseudo-label cache: one task per shard slice (ParallelFor), then a fan-in that
publishes the index once every shard exists (CPU: it merges indices, computes nothing).
`teacher`: the adapted teacher's Model."""

from kfp.dsl import Input, Metrics, Model, Output

from components._base import cpu_component, gpu_component


@gpu_component
def cache_teacher_shard(
    store_uri: str, experiment: str, config: str, teacher: Input[Model], manifests: list, shard_index: int,
    num_shards: int, kfp_task: str,
) -> int:
    from dakd_core.orchestration.tasks.artifacts import pinned
    from dakd_core.orchestration.tasks.cache_teacher import cache_shard_task

    out = cache_shard_task(store_uri=store_uri, experiment=experiment, config=config, teacher=pinned(teacher),
                           manifests=manifests,
                           shard_index=shard_index, num_shards=num_shards, kfp_task=kfp_task)
    return out["num_samples"]


@cpu_component
def cache_teacher_index(
    store_uri: str, experiment: str, config: str, teacher: Input[Model], manifests: list, num_shards: int,
    shard_samples: list, kfp_task: str, metrics: Output[Metrics],
) -> str:
    from dakd_core.orchestration.tasks.artifacts import pinned
    from dakd_core.orchestration.tasks.cache_teacher import cache_index_task

    out = cache_index_task(store_uri=store_uri, experiment=experiment, config=config, teacher=pinned(teacher),
                           manifests=manifests,
                           num_shards=num_shards, shard_samples=shard_samples, kfp_task=kfp_task)
    metrics.log_metric("num_samples", float(out["num_samples"]))
    return out["index"]
