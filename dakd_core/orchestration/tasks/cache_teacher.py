"""Teacher pseudo-label cache: one task per shard slice (ParallelFor), then a fan-in that
publishes the index once every shard exists. The cache's folder is named by the content of the
teacher, the manifests and the settings: a rerun with the same teacher reuses it.

`manifests` is [source train, target train] and `config` is the plan's `cache_teacher` settings
(dakd_core/orchestration/plan.py): `sizes` are the source and target resizes of the distill
stage, so the teacher runs at the geometry the student trains at."""

from __future__ import annotations

import json

from dakd_core.orchestration.pins import pin, resolve
from dakd_core.orchestration.tasks.common import content_key, tracked


def _cache_config(*, store_uri, config, teacher, manifests, shard_index, num_shards, finalize_only):
    from dakd_core.cache import CacheConfig
    from dakd_core.config import build_config
    from dakd_core.errors import ConfigError

    if len(manifests) != 2:
        raise ConfigError(f"manifests: expected [source train, target train], got {len(manifests)} entries")
    settings = json.loads(config)
    return build_config(
        CacheConfig, **settings, teacher=resolve(teacher), manifests=[resolve(m) for m in manifests],
        store=store_uri, name=content_key("cache-teacher", settings, teacher, manifests, int(num_shards)),
        shard_index=int(shard_index), num_shards=int(num_shards), finalize_only=finalize_only,
    )


@tracked("cache-teacher")
def cache_shard_task(*, store_uri: str, experiment: str, config: str, teacher: str, manifests: list,
                     shard_index: int, num_shards: int) -> dict:
    from dakd_core.cache import run_cache

    res = run_cache(_cache_config(store_uri=store_uri, config=config, teacher=teacher, manifests=manifests,
                                  shard_index=shard_index, num_shards=num_shards, finalize_only=False))
    return {"num_samples": res.num_samples, "bytes_written": res.bytes_written,
            "shards_written": res.shards_written, "shards_skipped": res.shards_skipped}


@tracked("cache-index")
def cache_index_task(*, store_uri: str, experiment: str, config: str, teacher: str, manifests: list,
                     num_shards: int, shard_samples: list) -> dict:
    """Fan-in: publish the index (fails naming the missing shards if a slice did not finish).
    `shard_samples` is the Collected output of the slices (it orders this task after all of them;
    KFP delivers collected ints as floats)."""
    from dakd_core.cache import run_cache

    res = run_cache(_cache_config(store_uri=store_uri, config=config, teacher=teacher, manifests=manifests, shard_index=0,
                                  num_shards=int(num_shards), finalize_only=True))
    return {"index": pin(res.index_uri), "num_samples": int(sum(float(n) for n in shard_samples))}
