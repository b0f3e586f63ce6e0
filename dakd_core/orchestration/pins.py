"""Pinned URIs: `uri#sha256=<hex>`.

Large data moves between pipeline tasks as object-store URIs. A task that publishes an object passes
it on pinned to its content hash, so (1) the hash is part of the downstream task's parameters and
KFP's cache can never serve a result computed from other bytes, and (2) a consumer refuses an
object that changed after it was published instead of silently training on it.
"""

from __future__ import annotations

import hashlib

from dakd_core.errors import DataError
from dakd_core.storage import read_bytes

_MARK = "#sha256="


def sha256_of(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


def pin(uri: str) -> str:
    """The URI with the sha256 of its current content attached."""
    if _MARK in uri:
        raise DataError(f"{uri} is already pinned")
    return f"{uri}{_MARK}{sha256_of(uri)}"


def split(pinned: str) -> tuple[str, str | None]:
    uri, sep, digest = pinned.partition(_MARK)
    return uri, (digest if sep else None)


def resolve(pinned: str) -> str:
    """The plain URI, after checking the content still has the pinned hash (unpinned: as is)."""
    uri, digest = split(pinned)
    if digest is not None:
        actual = sha256_of(uri)
        if actual != digest:
            raise DataError(
                f"{uri} changed after it was published (sha256 {actual[:12]}..., pinned {digest[:12]}...):"
                " rerun the stage that produced it"
            )
    return uri
