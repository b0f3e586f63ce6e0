"""Ingest one domain's dataset into the store: one manifest per split.

The source needs its labelled training split; the target its training split as UNLABELLED images
(the adaptation setting: no target labels reach training) and its labelled validation split."""

from __future__ import annotations

import hashlib


from dakd_core.orchestration.tasks.common import tracked
from dakd_core.errors import ConfigError
from dakd_core.orchestration.pins import pin


def dataset_name(fmt: str, domain: str, root_uri: str) -> str:
    """Store name of a dataset: readable, and distinct for distinct roots of one format."""
    return f"{fmt}-{domain}-{hashlib.sha256(root_uri.encode()).hexdigest()[:8]}"


def local_root(root_uri: str) -> str:
    """Dataset roots are directories (a mounted volume on a cluster): `file://` or a plain path."""
    if root_uri.startswith("file://"):
        return root_uri[len("file://"):]
    if "://" in root_uri:
        raise ConfigError(f"source_uri/target_uri: {root_uri} must be a directory (a path or file://), "
                          "mounted into the ingest task on a cluster")
    return root_uri


@tracked("ingest")
def ingest_task(*, store_uri: str, run_name: str, experiment: str, fmt: str, root_uri: str, domain: str,
                splits: list, workers: int = 4) -> dict:
    from dakd_core.config import build_config
    from dakd_core.data.ingest import IngestConfig, run_ingest

    if domain not in ("source", "target"):
        raise ConfigError(f"domain: '{domain}' must be source or target")
    name = dataset_name(fmt, domain, root_uri)
    out: dict = {"train_manifest": "", "val_manifest": "", "num_samples": {}}
    for split in splits:
        if split not in ("train", "val"):
            raise ConfigError(f"splits: '{split}' (expected train and/or val)")
        labels = domain == "source" or split == "val"
        cfg = build_config(IngestConfig, format=fmt, root=local_root(root_uri), split=split, domain=domain,
                           store=store_uri, name=name, labels=labels, workers=workers)
        res = run_ingest(cfg)
        out[f"{split}_manifest"] = pin(res.manifest_uri)
        out["num_samples"][split] = res.num_samples
    return out
