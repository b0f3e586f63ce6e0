"""Teacher pseudo-label cache: one task per shard slice (ParallelFor), then a fan-in that
publishes the index once every shard exists. The cache's folder is named by the content of the
teacher and the manifests: a rerun with the same teacher reuses it."""

from __future__ import annotations

from dakd_core.orchestration.pins import pin, resolve
from dakd_core.orchestration.tasks.common import content_key, tracked


def _cache_config(*, store_uri, teacher, manifests, shard_index, num_shards, finalize_only):
    from dakd_core.cache import CacheConfig
    from dakd_core.config import build_config

    return build_config(
        CacheConfig, teacher=resolve(teacher), manifests=[resolve(m) for m in manifests],
        store=store_uri, name=content_key("cache-teacher", teacher, manifests, int(num_shards)),
        shard_index=int(shard_index), num_shards=int(num_shards), finalize_only=finalize_only,
    )


@tracked("cache-teacher")
def cache_shard_task(*, store_uri: str, experiment: str, teacher: str, manifests: list, shard_index: int,
                     num_shards: int) -> dict:
    from dakd_core.cache import run_cache

    res = run_cache(_cache_config(store_uri=store_uri, teacher=teacher, manifests=manifests,
                                  shard_index=shard_index, num_shards=num_shards, finalize_only=False))
    return {"num_samples": res.num_samples, "bytes_written": res.bytes_written,
            "shards_written": res.shards_written, "shards_skipped": res.shards_skipped}


@tracked("cache-index")
def cache_index_task(*, store_uri: str, experiment: str, teacher: str, manifests: list, num_shards: int,
                     shard_samples: list) -> dict:
    """Fan-in: publish the index (fails naming the missing shards if a slice did not finish).
    `shard_samples` is the Collected output of the slices (it orders this task after all of them;
    KFP delivers collected ints as floats)."""
    from dakd_core.cache import run_cache

    res = run_cache(_cache_config(store_uri=store_uri, teacher=teacher, manifests=manifests, shard_index=0,
                                  num_shards=int(num_shards), finalize_only=True))
    return {"index": pin(res.index_uri), "num_samples": int(sum(float(n) for n in shard_samples))}
