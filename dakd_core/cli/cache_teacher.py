"""`dakd cache-teacher`: run the frozen teacher once over the training images and store its
probability maps, pseudo-labels and confidences as sharded objects plus a Parquet index."""

from __future__ import annotations

import json

NAME = "cache-teacher"
HELP = (
    "cache the frozen teacher's main/aux probability maps, argmax pseudo-labels and confidences "
    "for every image of the given manifests under {store}/teacher_cache/{name}/ (resumable; "
    "--shard i/n for fan-out, --finalize to merge the shard indices)"
)


def add_arguments(p) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of CacheConfig fields (flags override it)")
    p.add_argument("--teacher", help="teacher checkpoint URI")
    p.add_argument("--manifest", dest="manifests", action="append", metavar="URI",
                   help="manifest.parquet of images to cache; repeat (source train, target train)")
    p.add_argument("--store", help="store root URI (file:///..., /abs/dir or s3://bucket/prefix)")
    p.add_argument("--name", help="cache name: objects go under {store}/teacher_cache/{name}/")
    p.add_argument("--shard", metavar="i/n", help="process only shard slice i of n (pipeline fan-out)")
    p.add_argument("--dtype", choices=("fp16", "uint8"), help="storage type of the probability maps")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="training resolution of every manifest")
    p.add_argument("--manifest-size", dest="sizes", type=int, nargs=2, action="append", metavar=("H", "W"),
                   help="training resolution of one manifest; repeat once per --manifest, in the same order "
                        "(the distill stage's source_resize, then target_resize); overrides --size")
    p.add_argument("--shard-size", type=int, help="samples per shard object")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--finalize", dest="finalize_only", action="store_const", const=True,
                   help="only merge the shard indices into index.parquet (fan-in step)")


def run(args) -> int:
    from dakd_core.cache import CacheConfig, parse_shard, run_cache
    from dakd_core.config import build_config

    shard_index, num_shards = parse_shard(args.shard) if args.shard else (None, None)
    cfg = build_config(
        CacheConfig, args.config, teacher=args.teacher, manifests=args.manifests, store=args.store,
        name=args.name, shard_index=shard_index, num_shards=num_shards, dtype=args.dtype, size=args.size,
        sizes=args.sizes,
        shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, finalize_only=args.finalize_only,
    )
    result = run_cache(cfg)
    print(json.dumps(result.__dict__, indent=2, sort_keys=True))
    return 0
