"""Teacher pseudo-label cache: one task per shard slice (ParallelFor), then a fan-in that
publishes the index once every shard exists."""

from kfp.dsl import Metrics, Output

from components._base import gpu_component


@gpu_component
def cache_teacher_shard(
    store_uri: str, run_name: str, teacher: str, manifests: list, source_resize: list, target_resize: list,
    shard_index: int, num_shards: int, experiment: str, parent_run_id: str, kfp_run_id: str, kfp_task: str,
) -> int:
    from dakd_core.orchestration.tasks.cache_teacher import cache_shard_task

    out = cache_shard_task(
        store_uri=store_uri, run_name=run_name, teacher=teacher, manifests=manifests,
        source_resize=source_resize, target_resize=target_resize,
        shard_index=shard_index, num_shards=num_shards, experiment=experiment,
        parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    return out["num_samples"]


@gpu_component
def cache_teacher_index(
    store_uri: str, run_name: str, teacher: str, manifests: list, source_resize: list, target_resize: list,
    num_shards: int, shard_samples: list, experiment: str, parent_run_id: str, kfp_run_id: str, kfp_task: str,
    metrics: Output[Metrics],
) -> str:
    from dakd_core.orchestration.tasks.cache_teacher import cache_index_task

    out = cache_index_task(
        store_uri=store_uri, run_name=run_name, teacher=teacher, manifests=manifests,
        source_resize=source_resize, target_resize=target_resize, num_shards=num_shards, shard_samples=shard_samples, experiment=experiment,
        parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    metrics.log_metric("num_samples", float(out["num_samples"]))
    return out["index"]
