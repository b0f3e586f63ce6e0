"""Teacher pseudo-label cache: one task per shard slice (ParallelFor), then a fan-in that
publishes the index once every shard exists.

`manifests` is [source train, target train] and the teacher sees them at `source_resize` and
`target_resize`: the very parameters the distill task gives the student's source and target
streams, so every cached target is computed at the geometry it is used at."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import hw, tracked
from dakd_core.orchestration.pins import pin, resolve


def _cache_config(*, store_uri, run_name, teacher, manifests, source_resize, target_resize, shard_index,
                  num_shards, finalize_only):
    from dakd_core.cache import CacheConfig
    from dakd_core.config import build_config
    from dakd_core.errors import ConfigError

    if len(manifests) != 2:
        raise ConfigError(f"manifests: expected [source train, target train], got {len(manifests)} entries")
    return build_config(
        CacheConfig, teacher=resolve(teacher), manifests=[resolve(m) for m in manifests],
        sizes=[hw(source_resize), hw(target_resize)], store=store_uri, name=run_name,
        shard_index=int(shard_index), num_shards=int(num_shards), finalize_only=finalize_only,
    )


@tracked("cache-teacher")
def cache_shard_task(*, store_uri: str, run_name: str, experiment: str, teacher: str, manifests: list,
                     source_resize: list, target_resize: list, shard_index: int, num_shards: int) -> dict:
    from dakd_core.cache import run_cache

    res = run_cache(_cache_config(store_uri=store_uri, run_name=run_name, teacher=teacher, manifests=manifests,
                                  source_resize=source_resize, target_resize=target_resize,
                                  shard_index=shard_index, num_shards=num_shards, finalize_only=False))
    return {"num_samples": res.num_samples, "bytes_written": res.bytes_written,
            "shards_written": res.shards_written, "shards_skipped": res.shards_skipped}


@tracked("cache-index")
def cache_index_task(*, store_uri: str, run_name: str, experiment: str, teacher: str, manifests: list,
                     source_resize: list, target_resize: list, num_shards: int, shard_samples: list) -> dict:
    """Fan-in: publish the index (fails naming the missing shards if a slice did not finish).
    `shard_samples` is the Collected output of the slices (it orders this task after all of them;
    KFP delivers collected ints as floats)."""
    from dakd_core.cache import run_cache

    res = run_cache(_cache_config(store_uri=store_uri, run_name=run_name, teacher=teacher, manifests=manifests,
                                  source_resize=source_resize, target_resize=target_resize,
                                  shard_index=0, num_shards=int(num_shards), finalize_only=True))
    return {"index": pin(res.index_uri), "num_samples": int(sum(float(n) for n in shard_samples))}
