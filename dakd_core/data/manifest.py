"""The dataset manifest: one Parquet row per sample, the only entry point to an ingested split.

Written last by ingest (`{store}/datasets/{NAME}/{split}/manifest.parquet`); whatever a manifest
does not name is invisible to training, caching and evaluation.
"""

from __future__ import annotations

import io
from typing import Any, Iterable

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
    ]
)
COLUMNS = tuple(MANIFEST_SCHEMA.names)


def manifest_key(name: str, split: str) -> str:
    """Store key of a dataset split's manifest."""
    return f"datasets/{name}/{split}/manifest.parquet"


def _check_rows(rows: list[dict[str, Any]], where: str) -> None:
    seen = set()
    for i, row in enumerate(rows):
        if len(row["class_pixels"]) != NUM_CLASSES:
            raise DataError(f"{where}: row {i} ({row['sample_id']}) has {len(row['class_pixels'])} "
                            f"class_pixels, expected {NUM_CLASSES}")
        if row["sample_id"] in seen:
            raise DataError(f"{where}: duplicate sample_id {row['sample_id']!r}")
        seen.add(row["sample_id"])


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"manifest rows lack columns {missing}")
    return pa.Table.from_pylist([{c: r[c] for c in COLUMNS} for r in rows], schema=MANIFEST_SCHEMA)


def write_manifest(store, key: str, rows: Iterable[dict[str, Any]]) -> str:
    """Validate and write rows as Parquet to `store` at `key` (atomic put); return its URI."""
    rows = list(rows)
    if not rows:
        raise DataError(f"refusing to write an empty manifest to {store.url(key)}")
    _check_rows(rows, store.url(key))
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
    if not table.schema.equals(MANIFEST_SCHEMA, check_metadata=False):
        raise DataError(
            f"manifest {uri} has the wrong schema: got columns "
            f"{[f'{f.name}: {f.type}' for f in table.schema]}, expected "
            f"{[f'{f.name}: {f.type}' for f in MANIFEST_SCHEMA]}"
        )
    rows = table.to_pylist()
    if not rows:
        raise DataError(f"manifest {uri} is empty (no samples)")
    _check_rows(rows, f"manifest {uri}")
    return rows
