"""The dataset manifest: one Parquet row per sample, the only entry point to an ingested split.

Written last by ingest (`{store}/datasets/{NAME}/{split}/manifest.parquet`); whatever a manifest
does not name is invisible to training, caching and evaluation.

A manifest is trusted no further than its own store: every image/label URI must lie inside it
(`manifest_root`: the store of a `{store}/datasets/{NAME}/{split}/manifest.parquet`, else the
manifest's folder), so a manifest cannot make a stage read `../../etc/passwd`, an absolute path or
another bucket. `read_row_image` / `read_row_label` are how stages read a row's objects: the bytes
are checked against the sha256 ingest recorded for the stored object (`image_object_sha256`,
`label_object_sha256`; absent in manifests written before them), and the decoded size against the
row's height and width.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dakd_core.errors import DakdError, DataError
from dakd_core.labels import NUM_CLASSES

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("condition", pa.string(), nullable=True),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("label_uri", pa.string(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("class_pixels", pa.list_(pa.int64()), nullable=False),
        # sha256 of the stored objects (`sha256` above is the *source* image's, which a re-encoded
        # or replaced stored object no longer matches); null in rows written before they existed.
        pa.field("image_object_sha256", pa.string(), nullable=True),
        pa.field("label_object_sha256", pa.string(), nullable=True),
    ]
)
COLUMNS = tuple(MANIFEST_SCHEMA.names)
OBJECT_HASH_COLUMNS = ("image_object_sha256", "label_object_sha256")
# Manifests written before the object hashes: still readable, their rows get None there.
_SCHEMA_V1 = pa.schema([f for f in MANIFEST_SCHEMA if f.name not in OBJECT_HASH_COLUMNS])
_URI_COLUMNS = ("image_uri", "label_uri")
_STANDARD_LAYOUT = re.compile(r"^(?P<store>.+)/datasets/[^/]+/[^/]+/manifest\.parquet$")


def manifest_key(name: str, split: str) -> str:
    """Store key of a dataset split's manifest."""
    return f"datasets/{name}/{split}/manifest.parquet"


def manifest_root(manifest_uri: str) -> str:
    """The store URI every object of the manifest at `manifest_uri` must lie in (normalised)."""
    from dakd_core.storage import open_store

    uri = open_store(manifest_uri).uri
    standard = _STANDARD_LAYOUT.match(uri)
    return standard["store"] if standard else uri.rsplit("/", 1)[0]


def _check_uri(uri: str, root: str, where: str, row: int, sample_id: str, column: str) -> None:
    from dakd_core.storage import check_key

    culprit = f"{where}: row {row} ({sample_id!r}) {column} {uri!r}"
    if not isinstance(uri, str) or not uri.startswith(root + "/"):
        raise DataError(f"{culprit} is outside the manifest's store {root} (objects must be stored beside it)")
    try:
        check_key(uri[len(root) + 1:])  # no '..', '.', empty segments or backslashes
    except DakdError as e:
        raise DataError(f"{culprit} does not resolve inside {root}: {e}") from None


def _check_rows(rows: list[dict[str, Any]], where: str, root: str) -> None:
    seen = set()
    for i, row in enumerate(rows):
        if len(row["class_pixels"]) != NUM_CLASSES:
            raise DataError(f"{where}: row {i} ({row['sample_id']}) has {len(row['class_pixels'])} "
                            f"class_pixels, expected {NUM_CLASSES}")
        if row["sample_id"] in seen:
            raise DataError(f"{where}: duplicate sample_id {row['sample_id']!r}")
        seen.add(row["sample_id"])
        for column in _URI_COLUMNS:
            if row[column] is not None:
                _check_uri(row[column], root, where, i, row["sample_id"], column)


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    missing = [c for c in COLUMNS if rows and c not in rows[0] and c not in OBJECT_HASH_COLUMNS]
    if missing:
        raise ValueError(f"manifest rows lack columns {missing}")
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=MANIFEST_SCHEMA)


def write_manifest(store, key: str, rows: Iterable[dict[str, Any]]) -> str:
    """Validate and write rows as Parquet to `store` at `key` (atomic put); return its URI."""
    rows = list(rows)
    if not rows:
        raise DataError(f"refusing to write an empty manifest to {store.url(key)}")
    _check_rows(rows, store.url(key), manifest_root(store.url(key)))
    sink = io.BytesIO()
    pq.write_table(to_table(rows), sink)
    return store.put_bytes(key, sink.getvalue())


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """Rows of the manifest at `uri` as dicts; DataError naming the URI if missing, unreadable,
    of another schema or empty."""
    from dakd_core.storage import read_bytes

    try:
        data = read_bytes(uri)
    except DakdError as e:
        raise DataError(f"manifest {uri} cannot be read: {e}") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"manifest {uri} is not a readable Parquet file: {e}") from None
    if table.schema.equals(_SCHEMA_V1, check_metadata=False):
        table = _with_null_object_hashes(table)
    if not table.schema.equals(MANIFEST_SCHEMA, check_metadata=False):
        raise DataError(
            f"manifest {uri} has the wrong schema: got columns "
            f"{[f'{f.name}: {f.type}' for f in table.schema]}, expected "
            f"{[f'{f.name}: {f.type}' for f in MANIFEST_SCHEMA]}"
        )
    rows = table.to_pylist()
    if not rows:
        raise DataError(f"manifest {uri} is empty (no samples)")
    _check_rows(rows, f"manifest {uri}", manifest_root(uri))
    return rows


def _with_null_object_hashes(table: pa.Table) -> pa.Table:
    for name in OBJECT_HASH_COLUMNS:
        table = table.append_column(MANIFEST_SCHEMA.field(name), pa.nulls(table.num_rows, pa.string()))
    return table


def _read_object(row: dict[str, Any], column: str, manifest_uri: str) -> bytes:
    """A row's stored object, refused when its sha256 differs from the one ingest recorded."""
    from dakd_core.storage import read_bytes

    uri = row[f"{column}_uri"]
    data = read_bytes(uri)
    expected = row.get(f"{column}_object_sha256")
    if expected:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise DataError(
                f"{column} {uri} has sha256 {actual}, but manifest {manifest_uri} recorded {expected} for "
                f"sample {row['sample_id']!r}: the stored object changed after ingest (re-ingest the split)"
            )
    return data


def read_row_image(row: dict[str, Any], manifest_uri: str) -> np.ndarray:
    """The row's stored image (HxWx3 uint8 RGB), checked against the manifest's sha256 and size."""
    from dakd_core.data.imageio import decode_image

    image = decode_image(_read_object(row, "image", manifest_uri), row["image_uri"])
    if image.shape[:2] != (row["height"], row["width"]):
        raise DataError(
            f"image {row['image_uri']} is {image.shape[1]}x{image.shape[0]} but manifest {manifest_uri} "
            f"records {row['width']}x{row['height']} for sample {row['sample_id']!r}"
        )
    return image


def read_row_label(row: dict[str, Any], manifest_uri: str) -> np.ndarray:
    """The row's stored train-id label (HxW uint8), checked like `read_row_image`; its size must be
    the row's (the image's) size."""
    from dakd_core.data.imageio import decode_label

    label = decode_label(_read_object(row, "label", manifest_uri), row["label_uri"])
    if label.shape != (row["height"], row["width"]):
        raise DataError(
            f"label {row['label_uri']} is {label.shape[1]}x{label.shape[0]} but image {row['image_uri']} "
            f"is {row['width']}x{row['height']} (manifest {manifest_uri})"
        )
    return label
