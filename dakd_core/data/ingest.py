"""Ingest a dataset split from its on-disk layout into the object store, with a Parquet manifest.

    {store}/datasets/{NAME}/{split}/images/{sample_id}.png
    {store}/datasets/{NAME}/{split}/labels/{sample_id}_labelTrainIds.png
    {store}/datasets/{NAME}/{split}/class_summary.json
    {store}/datasets/{NAME}/{split}/manifest.parquet      <- written last: the split's only entry point

Every sample is checked (decodable, complete, label present and of the image's size, ids in the
format's table); any failure fails the run with a message naming the files and no manifest is
written. A labelled split whose every label pixel is void (255) is refused: nothing could be
trained or scored on it. Re-running skips samples whose source image hash matches the previous
manifest's row and whose stored objects still have the sha256 that row recorded (a replaced or
damaged stored object is rewritten; rows of manifests without object hashes are redone). Samples
are processed by a pool of threads (OpenCV and zlib release the GIL; measured faster than
processes, see benchmarks/bench_ingest.py) or processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field
from tqdm import tqdm

from dakd_core.config import StrictConfig
from dakd_core.data.formats import Sample, discover, read_label_ids
from dakd_core.data.source import StorePath
from dakd_core.data.imageio import decode_image, encode_png, is_png_rgb8
from dakd_core.data.manifest import manifest_key, read_manifest, write_manifest
from dakd_core.errors import DataError, StoreError
from dakd_core.labels import CLASS_NAMES, FORMATS, NUM_CLASSES, UnknownLabelIdsError, remap
from dakd_core.lease import WriterLease

SUMMARY_NAME = "class_summary.json"
_MAX_LISTED = 10
_SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

FormatName = Literal[FORMATS]  # type: ignore[valid-type]


class IngestConfig(StrictConfig):
    format: FormatName = Field(description="dataset layout: " + ", ".join(FORMATS))
    root: str = Field(min_length=1, description="dataset root: a directory, pvc://CLAIM/path (the claim's "
                                                "mount in a pipeline task) or s3://bucket/prefix")
    split: str = Field(pattern=_SAFE_NAME, description="split to ingest (e.g. train, val, all)")
    domain: Literal["source", "target"]
    store: str = Field(min_length=1, description="object store URI (file://... or s3://...)")
    name: str = Field(pattern=_SAFE_NAME, description="dataset name under {store}/datasets/")
    workers: int = Field(default=1, ge=1, le=256)
    labels: bool = Field(default=True, description="False: ingest images only (unlabelled)")
    unknown_ids: Literal["error", "ignore"] = "error"
    split_list: str | None = Field(default=None, description="GTA5/SYNTHIA split list file (a path or s3:// URI)")
    pool: Literal["thread", "process"] = "thread"


@dataclass
class IngestResult:
    manifest_uri: str
    num_samples: int
    class_summary: dict[str, Any]
    num_written: int = 0
    num_skipped: int = 0
    num_repaired: int = 0  # written because a stored object no longer matched the previous manifest
    unknown_pixels: int = 0  # ids outside the table mapped to 255 (unknown_ids="ignore") this run
    summary_uri: str = ""


@dataclass(frozen=True)
class _Task:
    sample: Sample
    fmt: str
    with_labels: bool
    unknown: str
    dataset_uri: str  # store rooted at datasets/{NAME}/{split}
    split: str
    domain: str
    previous: dict[str, Any] | None  # the previous manifest's row, if its objects all exist
    source_sha256: str | None  # hash of the source image, when already computed


@dataclass
class _Outcome:
    sample_id: str
    row: dict[str, Any] | None = None
    skipped: bool = False
    repaired: bool = False
    error: str | None = None
    unknown_ids: list[int] = field(default_factory=list)
    unknown_pixels: int = 0
    label_path: str | None = None


def image_key(sample_id: str) -> str:
    return f"images/{sample_id}.png"


def label_key(sample_id: str) -> str:
    return f"labels/{sample_id}_labelTrainIds.png"


@lru_cache(maxsize=8)
def _store(uri: str):
    # One store object per process (process pools rebuild it after fork/spawn).
    from dakd_core.storage import open_store

    return open_store(uri)


def _read_source(path: Path | StorePath) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
    except StoreError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def _stored_objects_match(store, prev: dict[str, Any]) -> bool:
    """True when the stored image (and label) still hash to what the previous manifest recorded.

    The source hash alone says the *input* is unchanged; the stored object may since have been
    overwritten or damaged, and skipping it would republish a manifest over bad bytes."""
    wanted = [(image_key(prev["sample_id"]), prev["image_object_sha256"])]
    if prev["label_uri"] is not None:
        wanted.append((label_key(prev["sample_id"]), prev["label_object_sha256"]))
    for key, expected in wanted:
        try:
            data = store.get_bytes(key)
        except StoreError:
            return False
        if hashlib.sha256(data).hexdigest() != expected:
            return False
    return True


def _ingest_one(task: _Task) -> _Outcome:
    """Check, convert and store one sample; user errors come back in the outcome, not raised,
    so that one run reports every bad file at once."""
    s = task.sample
    out = _Outcome(s.sample_id, label_path=str(s.label_path) if s.label_path else None)
    try:
        prev = task.previous
        if (prev is not None and prev["sha256"] == task.source_sha256
                and (prev["label_uri"] is not None) == task.with_labels):
            # A manifest from before object hashes has nothing to compare: the sample is redone.
            hashed = prev["image_object_sha256"] and (prev["label_uri"] is None or prev["label_object_sha256"])
            if hashed and _stored_objects_match(_store(task.dataset_uri), prev):
                out.row = {**prev, "split": task.split, "domain": task.domain, "condition": s.condition}
                out.skipped = True
                return out
            out.repaired = bool(hashed)
        data = _read_source(s.image_path)
        digest = hashlib.sha256(data).hexdigest()
        image = decode_image(data, str(s.image_path))
        height, width = image.shape[:2]
        class_pixels = [0] * NUM_CLASSES
        label_png = None
        if task.with_labels:
            if s.label_path is None:  # discover(require_labels=True) already rules this out
                raise DataError(f"label missing for image {s.image_path}")
            ids = read_label_ids(s.label_path, task.fmt)
            if ids.shape != (height, width):
                raise DataError(
                    f"label {s.label_path} is {ids.shape[1]}x{ids.shape[0]} but its image "
                    f"{s.image_path} is {width}x{height}"
                )
            remapped = remap(ids, task.fmt, task.unknown, name=str(s.label_path))
            out.unknown_ids, out.unknown_pixels = remapped.unknown_ids, remapped.unknown_pixels
            class_pixels = [int(v) for v in remapped.class_pixels]
            label_png = encode_png(remapped.train_ids)
        store = _store(task.dataset_uri)
        # A source that is already an 8-bit RGB PNG is stored byte for byte (no re-encode).
        image_png = data if is_png_rgb8(data) else encode_png(image)
        image_uri = store.put_bytes(image_key(s.sample_id), image_png)
        label_uri = store.put_bytes(label_key(s.sample_id), label_png) if label_png is not None else None
        out.row = {
            "sample_id": s.sample_id, "split": task.split, "domain": task.domain,
            "condition": s.condition, "image_uri": image_uri, "label_uri": label_uri,
            "height": height, "width": width, "sha256": digest, "class_pixels": class_pixels,
            # Kept byte for byte: the stored object's hash is the source's, already computed.
            "image_object_sha256": digest if image_png is data else hashlib.sha256(image_png).hexdigest(),
            "label_object_sha256": hashlib.sha256(label_png).hexdigest() if label_png is not None else None,
        }
    except UnknownLabelIdsError as e:
        out.error, out.unknown_ids = str(e), e.ids
    except DataError as e:
        out.error = str(e)
    return out


def _source_sha256(path: Path | StorePath) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, StoreError):
        return None  # reported by the main pass


def _previous_rows(dataset, manifest_uri: str) -> dict[str, dict[str, Any]]:
    """Rows of the existing manifest whose objects all still exist, by sample id."""
    if not dataset.exists("manifest.parquet"):
        return {}
    try:
        rows = read_manifest(manifest_uri)
    except DataError:
        return {}  # an unreadable old manifest just means nothing can be skipped
    keys = set(dataset.list("images/")) | set(dataset.list("labels/"))
    usable = {}
    for row in rows:
        wanted = [image_key(row["sample_id"])] + ([label_key(row["sample_id"])] if row["label_uri"] else [])
        if all(k in keys for k in wanted):
            usable[row["sample_id"]] = row
    return usable


def _make_pool(cfg: IngestConfig) -> Executor | None:
    if cfg.workers == 1:
        return None
    if cfg.pool == "process":
        return ProcessPoolExecutor(max_workers=cfg.workers)
    return ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="ingest")


def _map(pool: Executor | None, fn, items: list, chunksize: int = 1) -> Iterator:
    if pool is None:
        return map(fn, items)
    if isinstance(pool, ProcessPoolExecutor):
        return pool.map(fn, items, chunksize=chunksize)
    return pool.map(fn, items)


def _chunksize(items: int, workers: int) -> int:
    """Samples per process-pool task: at least 4 tasks per worker, so that the last ones balance
    the load (a fixed 4 gave 2 workers on 6 samples a 4/2 split), at most 16 (pickling amortised)."""
    return max(1, min(16, items // (4 * workers)))


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True,
                disable=os.environ.get("DAKD_NO_PROGRESS") == "1")


def class_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pixel counts and shares per train class over the labelled rows.

    share = pixels / all labelled non-ignored pixels; ignored_pixels counts 255 (void and
    classes outside the 19)."""
    labelled = [r for r in rows if r["label_uri"] is not None]
    totals = [sum(r["class_pixels"][c] for r in labelled) for c in range(NUM_CLASSES)]
    counted = sum(totals)
    all_pixels = sum(int(r["height"]) * int(r["width"]) for r in labelled)
    return {
        "num_samples": len(rows),
        "labelled_samples": len(labelled),
        "total_pixels": all_pixels,
        "ignored_pixels": all_pixels - counted,
        "classes": [
            {"train_id": c, "name": CLASS_NAMES[c], "pixels": totals[c],
             "share": (totals[c] / counted) if counted else 0.0}
            for c in range(NUM_CLASSES)
        ],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The class-frequency table as text (printed by the CLI)."""
    lines = [f"{summary['labelled_samples']} labelled of {summary['num_samples']} samples; "
             f"ignored pixels: {summary['ignored_pixels']} of {summary['total_pixels']}",
             f"{'id':>3}  {'class':<14}{'pixels':>14}{'share':>9}"]
    for c in summary["classes"]:
        lines.append(f"{c['train_id']:>3}  {c['name']:<14}{c['pixels']:>14}{c['share']:>9.2%}")
    return "\n".join(lines)


def _failure_message(cfg: IngestConfig, failed: list[_Outcome], total: int) -> str:
    unknown = [o for o in failed if o.unknown_ids]
    others = [o for o in failed if not o.unknown_ids]
    parts = []
    if unknown:
        ids = sorted({i for o in unknown for i in o.unknown_ids})
        files = [o.label_path or o.sample_id for o in unknown]
        more = f" ... ({len(files)} files in all)" if len(files) > _MAX_LISTED else ""
        parts.append(
            f"label ids {ids} are outside the '{cfg.format}' table in {len(files)} file(s): "
            f"{', '.join(files[:_MAX_LISTED])}{more} (field 'unknown_ids': 'ignore' maps them to 255)"
        )
    if others:
        more = f"; ... ({len(others)} in all)" if len(others) > _MAX_LISTED else ""
        parts.append("; ".join(o.error for o in others[:_MAX_LISTED]) + more)
    return (f"ingest of {cfg.format} split '{cfg.split}' from {cfg.root} failed for {len(failed)} of "
            f"{total} samples, no manifest written: " + " | ".join(parts))


def run_ingest(cfg: IngestConfig) -> IngestResult:
    """Discover, check, convert and store a split; write the class summary, then the manifest."""
    from dakd_core.storage import open_store

    samples = discover(cfg.format, cfg.root, cfg.split, require_labels=cfg.labels, split_list=cfg.split_list)
    dataset = open_store(cfg.store).child(f"datasets/{cfg.name}/{cfg.split}")
    # One ingest per dataset split at a time: two would overwrite each other's objects and one
    # could publish a manifest whose sha256s belong to the other's images.
    with WriterLease(dataset, f"dataset split {cfg.name}/{cfg.split} of {cfg.store}") as lease:
        return _ingest_split(cfg, samples, dataset, lease)


def _ingest_split(cfg: IngestConfig, samples, dataset, lease: WriterLease) -> IngestResult:
    from dakd_core.storage import open_store

    manifest_uri = open_store(cfg.store).url(manifest_key(cfg.name, cfg.split))
    previous = _previous_rows(dataset, manifest_uri)

    pool = _make_pool(cfg)
    with pool or contextlib.nullcontext():
        # Re-ingest overwrites the objects of changed samples in place: drop the old manifest
        # first, so that a run failing halfway leaves no manifest pointing at mixed objects.
        known = [s for s in samples if s.sample_id in previous]
        hashes = dict(zip((s.sample_id for s in known),
                          _map(pool, _source_sha256, [s.image_path for s in known], chunksize=_chunksize(len(known), cfg.workers))))
        if any(h != previous[i]["sha256"] for i, h in hashes.items()):
            dataset.delete("manifest.parquet")

        tasks = [
            _Task(s, cfg.format, cfg.labels, cfg.unknown_ids, dataset.uri, cfg.split, cfg.domain,
                  previous.get(s.sample_id), hashes.get(s.sample_id))
            for s in samples
        ]
        outcomes = []
        with _progress(len(tasks), f"ingest {cfg.name}/{cfg.split}") as bar:
            for outcome in _map(pool, _ingest_one, tasks, chunksize=_chunksize(len(tasks), cfg.workers)):
                outcomes.append(outcome)
                bar.update(1)

    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise DataError(_failure_message(cfg, failed, len(outcomes)))
    rows = [o.row for o in outcomes]
    summary = class_summary(rows)
    if summary["labelled_samples"] and summary["ignored_pixels"] == summary["total_pixels"]:
        # Training on it gives an all-ignored loss (0, nothing learnt) and scoring gives no mIoU at
        # all; most likely the ids are of another format or unknown_ids=ignore swallowed them.
        swallowed = " (ignore maps unknown ids to 255)" if cfg.unknown_ids == "ignore" else ""
        raise DataError(
            f"every label pixel of {cfg.format} split '{cfg.split}' from {cfg.root} is void (255) in all "
            f"{summary['labelled_samples']} labels, no manifest written: check --format (ids of another "
            f"dataset?) and field 'unknown_ids'{swallowed}"
        )
    unknown_pixels = sum(o.unknown_pixels for o in outcomes)
    with lease.publishing(manifest_uri):
        summary_uri = dataset.put_bytes(
            SUMMARY_NAME, json.dumps({**summary, "format": cfg.format, "domain": cfg.domain}, indent=2).encode()
        )
        written_uri = write_manifest(dataset, "manifest.parquet", rows)
    assert written_uri == manifest_uri, (written_uri, manifest_uri)
    skipped = sum(o.skipped for o in outcomes)
    return IngestResult(manifest_uri, len(rows), summary, len(rows) - skipped, skipped,
                        sum(o.repaired for o in outcomes), unknown_pixels, summary_uri)
