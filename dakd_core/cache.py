"""Teacher pseudo-label cache on object storage.

Distillation needs the frozen teacher's output for every training image, every epoch. Running a
ResNet-101 teacher next to a small student dominates the step time, and the output never changes,
so `run_cache` computes it once and stores, per image:

- main and aux probability maps at output stride (fp16, or uint8 quantised: p * 255),
- the argmax pseudo-label at full (training) resolution as a uint8 PNG,
- the max-probability confidence at full resolution, quantised to a uint8 PNG.

Layout under `{store}/teacher_cache/{NAME}/`:
    shards/shard_{k:05d}.bin       records of `shard_size` consecutive samples, zlib-compressed arrays
    shards/shard_{k:05d}.parquet   that shard's index rows, written after its .bin (= shard complete)
    index.parquet                  all shard indices merged; published last, only when all exist

Every index row carries its shard's sha256 (`shard_sha256`), checked when the reader fetches the
shard: a flipped bit in a stored shard is a DataError naming it, not a silently wrong target.
Shard keys are checked to stay under the cache's folder (no '..', absolute or scheme-qualified keys).

Per-domain teacher statistics: the adapted teacher's BatchNorm running statistics are the target
domain's (adaptation's `bn_statistics: target`), so running it in eval mode on source images would
normalise them with target statistics. The cache labels each domain with its own: before the source
images, the teacher's statistics are re-estimated on up to `bn_source_images` source images
(`with_domain_statistics`, a cumulative average in train mode, weights untouched); target images keep
the checkpoint's. The live teacher of `dakd distill --teacher-online` does the same.

Sharding lets a pipeline fan out (`shard i/n` processes the shards k with k % n == i) and makes the
work resumable: a rerun skips every shard whose index exists and matches this run's fingerprint
(teacher checkpoint sha256, manifest sha256s, dtype, size, shard size). Every index row carries the
teacher checkpoint sha256 and its manifest's sha256, so distillation can detect a stale cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import weakref
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tqdm import tqdm

from dakd_core.config import HW, StrictConfig
from dakd_core.data.memo import DecodedMemo
from dakd_core.errors import ConfigError, DataError, StoreError
from dakd_core.lease import WriterLease

# /2: shard checksums in the index (the format is part of every shard's fingerprint, so a resumed
# /1 cache is recomputed rather than mixed).
# /3: source images labelled with source BatchNorm statistics (bn_source_images)
CACHE_FORMAT = "dakd-teacher-cache/3"

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("domain", pa.string()),
        ("shard_key", pa.string()),
        ("offset", pa.int64()),  # byte offset of the record in the shard object
        # record = main | aux | label | confidence, each segment zlib-compressed, lengths below
        ("main_nbytes", pa.int64()),
        ("aux_nbytes", pa.int64()),
        ("label_nbytes", pa.int64()),
        ("conf_nbytes", pa.int64()),
        ("dtype", pa.string()),  # "fp16" | "uint8" (probability maps)
        ("main_shape", pa.list_(pa.int32())),  # C, h, w
        ("aux_shape", pa.list_(pa.int32())),
        ("label_shape", pa.list_(pa.int32())),  # H, W
        ("teacher_sha256", pa.string()),
        ("manifest_uri", pa.string()),
        ("manifest_sha256", pa.string()),
        ("image_sha256", pa.string()),
        ("fingerprint", pa.string()),
        ("shard_sha256", pa.string()),  # sha256 of the whole shard object the row points into
    ]
)


def shard_key(k: int) -> str:
    return f"shards/shard_{k:05d}.bin"


def shard_index_key(k: int) -> str:
    return f"shards/shard_{k:05d}.parquet"


INDEX_KEY = "index.parquet"


class CacheConfig(StrictConfig):
    """Settings of one `dakd cache-teacher` run (or one shard slice of it)."""

    teacher: str = Field(description="teacher checkpoint URI")
    manifests: list[str] = Field(min_length=1, description="manifests whose images are cached")
    store: str = Field(description="store root; the cache goes under teacher_cache/{name}/")
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    shard_index: int = Field(0, ge=0)
    num_shards: int = Field(1, ge=1)
    dtype: Literal["fp16", "uint8"] = "uint8"
    # (H, W) the training resolution the student sees; None keeps each image's own size.
    size: tuple[int, int] | None = None
    sizes: list[HW] | None = Field(
        None, description="one (H, W) per manifest, in `manifests` order, overriding `size`: the resize the "
        "distill stage gives that domain (source_resize for the source manifest, target_resize for the "
        "target one), so the teacher runs at the geometry the student trains at")
    shard_size: int = Field(64, gt=0, description="samples per shard object")
    bn_source_images: int = Field(
        256, ge=0, description="source images the teacher's BatchNorm statistics are re-estimated on before it "
        "labels the source images (its own running statistics are the target domain's after adaptation); 0 "
        "labels every domain with the checkpoint's statistics")
    batch_size: int = Field(4, gt=0)
    num_workers: int = Field(0, ge=0)
    device: str | None = None
    finalize_only: bool = False  # fan-in step: merge the shard indices, compute nothing

    @model_validator(mode="after")
    def _check(self) -> "CacheConfig":
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} must be < num_shards {self.num_shards}")
        if self.size is not None and min(self.size) <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.sizes is not None and len(self.sizes) != len(self.manifests):
            raise ValueError(f"sizes has {len(self.sizes)} entries for {len(self.manifests)} manifests "
                             "(one (H, W) per manifest, in order)")
        return self

    def size_of(self, manifest: str) -> tuple[int, int] | None:
        """The (H, W) the teacher sees the images of `manifest` at (None: their stored size)."""
        if self.sizes is None:
            return self.size
        return tuple(self.sizes[self.manifests.index(manifest)])


@dataclass
class CacheResult:
    index_uri: str | None  # None while other shard slices are still missing
    num_samples: int  # samples computed by this run
    bytes_written: int
    shards_written: int = 0
    shards_skipped: int = 0


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), with 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def sha256_uri(uri: str) -> str:
    """Content hash of a stored object (teacher checkpoint, manifest)."""
    from dakd_core.storage import read_bytes

    return hashlib.sha256(read_bytes(uri)).hexdigest()


# ---------------------------------------------------------------------------------------------
# Encoding of one record


def quantize_probs(probs: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "fp16":
        return probs.astype(np.float16)
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def dequantize_probs(q: np.ndarray) -> np.ndarray:
    """Back to float32 probabilities that sum to 1 per pixel (quantisation breaks the sum)."""
    p = q.astype(np.float32)
    if q.dtype == np.uint8:
        p /= 255.0
    return p / np.maximum(p.sum(axis=0, keepdims=True), 1e-6)


def _encode_record(main: np.ndarray, aux: np.ndarray, label: np.ndarray, conf: np.ndarray, dtype: str):
    from dakd_core.data.imageio import encode_png

    segments = [
        zlib.compress(quantize_probs(main, dtype).tobytes(), 6),
        zlib.compress(quantize_probs(aux, dtype).tobytes(), 6),
        encode_png(label.astype(np.uint8)),
        encode_png(np.clip(np.rint(conf * 255.0), 0, 255).astype(np.uint8)),
    ]
    return segments


def _decode_record(buf: bytes, row: dict, where: str) -> dict:
    """The record's maps as stored: quantized `main`/`aux`, uint8 `label` and `confidence` (x255)."""
    from dakd_core.data.imageio import decode_label

    np_dtype = np.float16 if row["dtype"] == "fp16" else np.uint8
    lengths = [row["main_nbytes"], row["aux_nbytes"], row["label_nbytes"], row["conf_nbytes"]]
    if len(buf) != sum(lengths):
        raise DataError(f"teacher cache record {row['sample_id']} in {where} is truncated")
    parts, pos = [], 0
    for n in lengths:
        parts.append(buf[pos : pos + n])
        pos += n
    try:
        main = np.frombuffer(zlib.decompress(parts[0]), np_dtype).reshape(row["main_shape"])
        aux = np.frombuffer(zlib.decompress(parts[1]), np_dtype).reshape(row["aux_shape"])
    except (zlib.error, ValueError) as e:
        raise DataError(f"teacher cache record {row['sample_id']} in {where} is corrupt: {e}") from None
    label = decode_label(parts[2], f"{where}#{row['sample_id']}/label")
    conf = decode_label(parts[3], f"{where}#{row['sample_id']}/confidence")
    return {"main": main, "aux": aux, "label": label, "confidence": conf}


# ---------------------------------------------------------------------------------------------
# Teacher outputs


# no_grad, not inference_mode: the targets enter the student's autograd graph as constants.
@torch.no_grad()
def teacher_targets(teacher: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen teacher's targets for a batch of normalised images (N, 3, H, W).

    Returns float32 `main`/`aux` probabilities at output stride, the full-resolution argmax
    `label` (N, H, W, long) of the bilinearly upsampled main logits, and its max probability
    `confidence` (N, H, W). Used by the cache writer and by online distillation alike, so both
    produce the same targets.
    """
    with torch.autocast("cuda", dtype=torch.float16, enabled=images.is_cuda):
        out = teacher(images)
    main, aux = out.main.float(), out.aux.float()
    full = F.interpolate(main, size=images.shape[-2:], mode="bilinear", align_corners=False)
    conf, label = full.softmax(dim=1).max(dim=1)
    return {"main": main.softmax(dim=1), "aux": aux.softmax(dim=1), "label": label, "confidence": conf}


def _teacher_forward(teacher: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    # One seam for counting/interrupting teacher work in tests (resume test).
    return teacher_targets(teacher, images)


def load_frozen_teacher(uri: str, device: torch.device) -> torch.nn.Module:
    """The teacher in eval mode with gradients off: BatchNorm statistics can never move."""
    from dakd_core.models.checkpoint import load_model
    from dakd_core.train.engine import channels_last

    teacher, _meta = load_model(uri, map_location=device)
    channels_last(teacher, device).eval()  # the layout of the training batches
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def with_domain_statistics(model: torch.nn.Module, batches) -> torch.nn.Module:
    """A frozen copy of `model` (eval mode) whose BatchNorm running statistics are re-estimated on
    `batches` of normalised images: the cumulative mean and variance over all of them (momentum
    None), weights untouched. The model itself is left as it was. With no BatchNorm layer, or no
    batch, the copy keeps the model's statistics."""
    import copy

    estimate = copy.deepcopy(model)
    layers = [m for m in estimate.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch seen
        m.train()
    seen = 0
    for images in batches:
        estimate(images)
        seen += images.shape[0]
    for m, (mean, var, momentum) in zip(layers, saved):
        m.momentum = momentum
        if not seen:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    return estimate.eval().requires_grad_(False)


def source_statistics_teacher(teacher: torch.nn.Module, source_uris: list[str], size_of, max_images: int,
                              device: torch.device, batch_size: int = 4) -> torch.nn.Module:
    """The teacher with BatchNorm statistics of the first `max_images` images of the source
    manifests, in manifest order (the same on every shard task, so shards agree); `max_images` 0
    returns the teacher itself."""
    if max_images == 0:
        return teacher
    from dakd_core.data.dataset import ManifestDataset

    def batches():
        left = max_images
        for uri in source_uris:
            ds = ManifestDataset(uri, crop=None, train=False, with_labels=False, resize=size_of(uri))
            subset = torch.utils.data.Subset(ds, range(min(left, len(ds))))
            left -= len(subset)
            bs = batch_size if size_of(uri) is not None else 1
            for batch in torch.utils.data.DataLoader(subset, batch_size=bs):
                yield batch["image"].to(device)
            if left <= 0:
                return

    with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
        return with_domain_statistics(teacher, batches())


# ---------------------------------------------------------------------------------------------
# Writer


def _fingerprint(teacher_sha: str, manifest_shas: list[str], cfg: CacheConfig) -> str:
    payload = {
        "format": CACHE_FORMAT,
        "teacher": teacher_sha,
        "manifests": manifest_shas,
        "dtype": cfg.dtype,
        "size": list(cfg.size) if cfg.size else None,
        # per-manifest sizes only when given: fingerprints of caches made with `size` stay the same
        **({"sizes": [list(v) for v in cfg.sizes]} if cfg.sizes is not None else {}),
        "shard_size": cfg.shard_size,
        "bn_source_images": cfg.bn_source_images,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _collect_samples(manifests: list[str]) -> tuple[list[dict], list[str]]:
    """All manifest rows in order, tagged with their manifest URI and sha256; ids must be unique."""
    from dakd_core.data.manifest import read_manifest

    rows, shas, seen = [], [], {}
    for uri in manifests:
        sha = sha256_uri(uri)
        shas.append(sha)
        for r in read_manifest(uri):
            sid = r["sample_id"]
            if sid in seen:
                raise DataError(f"sample_id {sid!r} appears in both {seen[sid]} and {uri}: cache keys must be unique")
            seen[sid] = uri
            rows.append({**r, "_manifest_uri": uri, "_manifest_sha256": sha})
    return rows, shas


def _shard_is_complete(store, k: int, fingerprint: str) -> bool:
    if not (store.exists(shard_index_key(k)) and store.exists(shard_key(k))):
        return False
    table = pq.read_table(io.BytesIO(store.get_bytes(shard_index_key(k))))
    return table.num_rows > 0 and set(table.column("fingerprint").to_pylist()) == {fingerprint}


def _image_batches(rows: list[dict], manifest_uri_of: dict[str, int], cfg: CacheConfig):
    """(sample ids, normalised image batch, domain) triples, loaded through the shared ManifestDataset
    so the teacher sees exactly the resolution and normalisation the student trains on."""
    from dakd_core.data.dataset import ManifestDataset

    by_manifest: dict[str, list[int]] = {}
    for r in rows:
        by_manifest.setdefault(r["_manifest_uri"], []).append(manifest_uri_of[r["sample_id"]])
    for uri, indices in by_manifest.items():
        size = cfg.size_of(uri)
        ds = ManifestDataset(uri, crop=None, train=False, with_labels=False, resize=size)
        subset = torch.utils.data.Subset(ds, indices)
        # Images in one manifest may differ in size without a resize: batch only equal shapes.
        bs = cfg.batch_size if size is not None else 1
        loader = torch.utils.data.DataLoader(subset, batch_size=bs, num_workers=cfg.num_workers)
        domain = by_domain_of(rows, uri)
        for batch in loader:
            yield batch["sample_id"], batch["image"], domain


def by_domain_of(rows: list[dict], uri: str) -> str:
    """The domain ("source" / "target") of the manifest `uri`, from its rows' `domain` column."""
    domains = {r.get("domain") or "target" for r in rows if r["_manifest_uri"] == uri}
    if len(domains) != 1:
        raise DataError(f"manifest {uri} mixes domains {sorted(domains)}: one domain per manifest")
    return domains.pop()


def run_cache(cfg: CacheConfig) -> CacheResult:
    """Compute (this slice of) the teacher cache; publish index.parquet when every shard exists."""
    from dakd_core.train.engine import open_output, require_objects, resolve_device

    # Output, device and inputs first: a refused run creates nothing in the store (not even the lease).
    store = open_output(cfg.store, "store").child(f"teacher_cache/{cfg.name}")
    if cfg.device:
        resolve_device(cfg.device)
    require_objects([("teacher", cfg.teacher)] + [("manifests", m) for m in cfg.manifests])
    # Parallel shard tasks write disjoint slices, so the lease is per slice: two runs computing
    # the same slice (or two finalize steps) at once are refused.
    scope = "index" if cfg.finalize_only else f"slice-{cfg.shard_index}-of-{cfg.num_shards}"
    with WriterLease(store, f"teacher cache {store.uri} ({scope})", scope=scope) as lease:
        return _cache_slice(cfg, store, lease)


def _cache_slice(cfg: CacheConfig, store, lease: WriterLease) -> CacheResult:
    from dakd_core.train.engine import default_device, progress_disabled

    teacher_sha = sha256_uri(cfg.teacher)
    rows, manifest_shas = _collect_samples(cfg.manifests)
    fingerprint = _fingerprint(teacher_sha, manifest_shas, cfg)
    num_shards_total = (len(rows) + cfg.shard_size - 1) // cfg.shard_size
    mine = [k for k in range(num_shards_total) if k % cfg.num_shards == cfg.shard_index]

    result = CacheResult(index_uri=None, num_samples=0, bytes_written=0)
    if not cfg.finalize_only:
        todo = [k for k in mine if not _shard_is_complete(store, k, fingerprint)]
        result.shards_skipped = len(mine) - len(todo)
        if todo:
            device = torch.device(cfg.device) if cfg.device else default_device()
            teacher = load_frozen_teacher(cfg.teacher, device)
            teachers = {"target": teacher}
            source_uris = [uri for uri in cfg.manifests if by_domain_of(rows, uri) == "source"]
            if source_uris:
                teachers["source"] = source_statistics_teacher(teacher, source_uris, cfg.size_of, cfg.bn_source_images,
                                                               device, cfg.batch_size)
            # index of each sample inside its own manifest (what ManifestDataset addresses)
            position: dict[str, int] = {}
            counters: dict[str, int] = {}
            for r in rows:
                m = r["_manifest_uri"]
                position[r["sample_id"]] = counters.get(m, 0)
                counters[m] = counters.get(m, 0) + 1
            bar = tqdm(todo, desc=f"cache-teacher {cfg.name}", unit="shard", disable=progress_disabled())
            for k in bar:
                shard_rows = rows[k * cfg.shard_size : (k + 1) * cfg.shard_size]
                n = _write_shard(store, k, shard_rows, position, teachers, device, cfg, teacher_sha, fingerprint, lease)
                result.bytes_written += n
                result.shards_written += 1
                result.num_samples += len(shard_rows)

    if all(_shard_is_complete(store, k, fingerprint) for k in range(num_shards_total)):
        with lease.publishing(store.url(INDEX_KEY)):
            result.index_uri = _publish_index(store, num_shards_total)
    elif cfg.finalize_only:
        missing = [k for k in range(num_shards_total) if not _shard_is_complete(store, k, fingerprint)]
        raise StoreError(
            f"cannot finalize {store.uri}: shards {missing[:10]} of {num_shards_total} are missing or stale"
        )
    return result


def _write_shard(store, k, shard_rows, position, teachers, device, cfg, teacher_sha, fingerprint, lease) -> int:
    by_id = {r["sample_id"]: r for r in shard_rows}
    blob = bytearray()
    index_rows = []
    for sample_ids, images, domain in _image_batches(shard_rows, position, cfg):
        # each domain with its own BatchNorm statistics (the target's: the checkpoint's own)
        targets = _teacher_forward(teachers.get(domain, teachers["target"]), images.to(device, non_blocking=True))
        main, aux = targets["main"].cpu().numpy(), targets["aux"].cpu().numpy()
        label = targets["label"].to(torch.uint8).cpu().numpy()
        conf = targets["confidence"].cpu().numpy()
        for i, sid in enumerate(sample_ids):
            segs = _encode_record(main[i], aux[i], label[i], conf[i], cfg.dtype)
            r = by_id[sid]
            index_rows.append(
                {
                    "sample_id": sid,
                    "domain": r.get("domain") or "",
                    "shard_key": shard_key(k),
                    "offset": len(blob),
                    "main_nbytes": len(segs[0]),
                    "aux_nbytes": len(segs[1]),
                    "label_nbytes": len(segs[2]),
                    "conf_nbytes": len(segs[3]),
                    "dtype": cfg.dtype,
                    "main_shape": list(main[i].shape),
                    "aux_shape": list(aux[i].shape),
                    "label_shape": list(label[i].shape),
                    "teacher_sha256": teacher_sha,
                    "manifest_uri": r["_manifest_uri"],
                    "manifest_sha256": r["_manifest_sha256"],
                    "image_sha256": r.get("sha256") or "",
                    "fingerprint": fingerprint,
                }
            )
            for s in segs:
                blob += s
    digest = hashlib.sha256(blob).hexdigest()
    for row in index_rows:
        row["shard_sha256"] = digest
    # The shard's index is written after its data: an index that exists points at complete data.
    with lease.publishing(store.url(shard_key(k))):
        store.put_bytes(shard_key(k), bytes(blob))
        store.put_bytes(shard_index_key(k), _table_bytes(pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)))
    return len(blob)


def _table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _publish_index(store, num_shards_total: int) -> str:
    tables = [pq.read_table(io.BytesIO(store.get_bytes(shard_index_key(k)))) for k in range(num_shards_total)]
    merged = pa.concat_tables(tables).cast(INDEX_SCHEMA)
    return store.put_bytes(INDEX_KEY, _table_bytes(merged))


# ---------------------------------------------------------------------------------------------
# Reader


def _shard_checksums(rows, index_uri: str) -> dict[str, str]:
    """{shard key: sha256} from the index rows; DataError naming the index when a key would leave
    the cache's folder or one shard is given two checksums."""
    from dakd_core.storage import check_key

    sums: dict[str, str] = {}
    for r in rows:
        key = r["shard_key"]
        try:
            check_key(key)  # no '..', absolute or scheme-qualified keys: reads stay under the cache
        except StoreError as e:
            raise DataError(f"teacher cache index {index_uri}: sample {r['sample_id']!r} has shard_key "
                            f"{key!r} outside the cache folder: {e}") from None
        sha = r["shard_sha256"]
        if not sha or sums.setdefault(key, sha) != sha:
            raise DataError(f"teacher cache index {index_uri}: shard {key!r} has no single sha256 "
                            f"(sample {r['sample_id']!r}: {sha!r}, other samples: {sums.get(key)!r})")
    return sums


def _remove_local_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


class TeacherCache:
    """Random access to a published cache.

    Shards are downloaded once into `local_dir` (a temporary directory by default) and read by
    offset from there: a training epoch touches every sample in random order, and one GET per
    shard beats one GET per sample. Safe to pickle into DataLoader workers.
    """

    def __init__(self, index_uri: str, local_dir: str | None = None, memo_mib: int = 0):
        from dakd_core.storage import read_bytes

        self.index_uri = index_uri
        try:
            table = pq.read_table(io.BytesIO(read_bytes(index_uri)))
        except pa.ArrowInvalid as e:
            raise DataError(f"teacher cache index {index_uri} is not a valid Parquet file: {e}") from None
        missing = set(INDEX_SCHEMA.names) - set(table.schema.names)
        if missing:
            raise DataError(f"teacher cache index {index_uri} lacks columns {sorted(missing)} "
                            f"(not a {CACHE_FORMAT} cache: rebuild it with dakd cache-teacher)")
        self._rows = {r["sample_id"]: r for r in table.to_pylist()}
        if not self._rows:
            raise DataError(f"teacher cache index {index_uri} is empty")
        self._shard_sha256 = _shard_checksums(self._rows.values(), index_uri)
        self.root = index_uri.rsplit("/", 1)[0]
        self.teacher_sha256s = {r["teacher_sha256"] for r in self._rows.values()}
        self._local_dir = local_dir
        self._lock = threading.Lock()
        # Records as stored (quantized: a quarter of the float32 maps' memory), dequantized per get.
        self.memo = DecodedMemo(memo_mib)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._rows

    @property
    def dtype(self) -> str:
        return next(iter(self._rows.values()))["dtype"]

    def row(self, sample_id: str) -> dict:
        try:
            return self._rows[sample_id]
        except KeyError:
            raise DataError(f"sample {sample_id!r} is not in the teacher cache {self.index_uri}") from None

    def check(self, teacher_sha256: str | None = None, manifest_rows: list[dict] | None = None,
              manifest_uri: str = "", resize: tuple[int, int] | None = None) -> None:
        """Raise DataError when the cache was made by another teacher, misses/mismatches images, or
        ran the teacher at another size than the training `resize` (None: each image's stored size):
        targets computed at a scale the student never sees differ from the live teacher's."""
        if teacher_sha256 is not None and self.teacher_sha256s != {teacher_sha256}:
            raise DataError(
                f"teacher cache {self.index_uri} is stale: made by teacher sha256 "
                f"{sorted(self.teacher_sha256s)}, but the teacher checkpoint has sha256 {teacher_sha256}"
            )
        for r in manifest_rows or []:
            cached = self._rows.get(r["sample_id"])
            if cached is None:
                raise DataError(f"teacher cache {self.index_uri} has no entry for sample {r['sample_id']!r} of {manifest_uri}")
            if r.get("sha256") and cached["image_sha256"] and cached["image_sha256"] != r["sha256"]:
                raise DataError(
                    f"teacher cache {self.index_uri} is stale for sample {r['sample_id']!r} of {manifest_uri}: image sha256 differs"
                )
            want = list(resize) if resize is not None else [r["height"], r["width"]]
            if list(cached["label_shape"]) != [int(v) for v in want]:
                raise DataError(
                    f"teacher cache {self.index_uri} ran the teacher on sample {r['sample_id']!r} of {manifest_uri} "
                    f"at {cached['label_shape'][0]}x{cached['label_shape'][1]} (HxW), but it is trained at "
                    f"{want[0]}x{want[1]}: rebuild the cache with that size (cache-teacher --size/--manifest-size)"
                )

    def _local_shard(self, key: str) -> Path:
        if self._local_dir is None:
            with self._lock:
                if self._local_dir is None:
                    self._local_dir = tempfile.mkdtemp(prefix="dakd-teacher-cache-")
                    # Removed with the reader (or at exit) by the process that made it; forked
                    # DataLoader workers share the folder and must not delete it under the parent.
                    weakref.finalize(self, _remove_local_dir, self._local_dir, os.getpid())
        path = Path(self._local_dir) / hashlib.sha1(f"{self.root}/{key}".encode()).hexdigest()
        if not path.exists():
            from dakd_core.storage import read_bytes

            data = read_bytes(f"{self.root}/{key}")
            actual = hashlib.sha256(data).hexdigest()
            if actual != self._shard_sha256[key]:
                raise DataError(
                    f"teacher cache shard {self.root}/{key} is corrupt: sha256 {actual}, but index "
                    f"{self.index_uri} recorded {self._shard_sha256[key]} (rebuild the cache)"
                )
            # A /tmp cleaner (or a finished sibling reader) may have removed the folder: recreate it.
            path.parent.mkdir(parents=True, exist_ok=True)
            # Temp name + rename: concurrent DataLoader workers never read a half-written shard.
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def get(self, sample_id: str) -> dict:
        """{"main": (C,h,w) float32 probs, "aux": ..., "label": (H,W) uint8, "confidence": (H,W) float32}."""
        stored = self.memo.get(sample_id, lambda: self._read(sample_id))
        return {"main": dequantize_probs(stored["main"]), "aux": dequantize_probs(stored["aux"]),
                "label": stored["label"], "confidence": stored["confidence"].astype(np.float32) / 255.0}

    def _read(self, sample_id: str) -> dict:
        r = self.row(sample_id)
        length = r["main_nbytes"] + r["aux_nbytes"] + r["label_nbytes"] + r["conf_nbytes"]
        path = self._local_shard(r["shard_key"])
        with open(path, "rb") as f:
            f.seek(r["offset"])
            buf = f.read(length)
        return _decode_record(buf, r, f"{self.root}/{r['shard_key']}")
