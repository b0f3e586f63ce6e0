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


def check_root(root_uri: str, domain: str) -> str:
    """A dataset root is a directory, `pvc://CLAIM/path` or `s3://bucket/prefix`
    (dakd_core/data/source.py); another scheme is a ConfigError naming the pipeline parameter."""
    from dakd_core.data.source import source_path

    source_path(root_uri, f"{domain}_uri")
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
        cfg = build_config(IngestConfig, format=fmt, root=check_root(root_uri, domain), split=split, domain=domain,
                           store=store_uri, name=name, labels=labels, workers=workers)
        res = run_ingest(cfg)
        out[f"{split}_manifest"] = pin(res.manifest_uri)
        out["num_samples"][split] = res.num_samples
    return out
