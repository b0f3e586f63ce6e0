"""dakd ingest: a dataset split from its on-disk layout into the store, with a Parquet manifest."""

from __future__ import annotations

NAME = "ingest"
HELP = "ingest a dataset split (cityscapes, gta5, synthia, bdd100k, acdc, mapillary) into the store"


def add_arguments(p) -> None:
    # No argparse `choices` on --format: the config reports an unknown format naming the field.
    p.add_argument("--format", help="dataset layout: cityscapes, gta5, synthia, bdd100k, acdc, mapillary")
    p.add_argument("--root", help="dataset root directory")
    p.add_argument("--split", help="split to ingest (train, val, ...; GTA5/SYNTHIA: all or a split list)")
    p.add_argument("--domain", help="source or target")
    p.add_argument("--store", help="store URI: file:///dir, /dir or s3://bucket/prefix")
    p.add_argument("--name", help="dataset name: the manifest goes to {store}/datasets/{NAME}/{split}/")
    p.add_argument("--workers", type=int, help="parallel workers (default 1)")
    p.add_argument("--no-labels", dest="labels", action="store_false", default=None,
                   help="ingest images only (unlabelled target data)")
    p.add_argument("--unknown-ids", help="label ids outside the format's table: error (default) or ignore (-> 255)")
    p.add_argument("--split-list", help="GTA5/SYNTHIA: file listing the split's images, one per line")
    p.add_argument("--pool", help="thread (default) or process workers")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of IngestConfig fields (flags override it)")


def run(args) -> int:
    from dakd_core.config import build_config
    from dakd_core.data.ingest import IngestConfig, format_summary, run_ingest

    fields = ("format", "root", "split", "domain", "store", "name", "workers", "labels",
              "unknown_ids", "split_list", "pool")
    cfg = build_config(IngestConfig, args.config, **{f: getattr(args, f) for f in fields})
    from dakd_core.train.engine import open_output

    open_output(cfg.store, "store")  # a bad --store is refused before any input is read
    result = run_ingest(cfg)
    print(format_summary(result.class_summary))
    print(f"{result.num_samples} samples ({result.num_written} written, {result.num_skipped} unchanged)"
          + (f"; {result.num_repaired} whose stored objects no longer matched the manifest rewritten"
             if result.num_repaired else "")
          + (f"; {result.unknown_pixels} pixels of unknown ids mapped to 255" if result.unknown_pixels else ""))
    print(f"class summary: {result.summary_uri}")
    print(result.manifest_uri)
    return 0
