"""Where a raw dataset lives: a local directory, a mounted volume (``pvc://``) or an object-store
prefix (``s3://``), behind the slice of the ``pathlib`` API that discovery (formats.py) uses.

    /data/gta5  file:///data/gta5    a directory (a plain ``Path``)
    pvc://CLAIM/gta5                 the directory where the pipeline mounts claim CLAIM
                                     (``storage.pvc_path``: /mnt/pvc/CLAIM/gta5)
    s3://bucket/raw/gta5             a ``StorePath``: listed through dakd_core.storage, read per object

An S3 root is listed once (one paginated LIST of everything under it, on the first question about
it) and answered from that listing; "directories" are the key prefixes. Objects are read with one
GET each when ingest reads them. A key ending in "/" (a console "folder" marker) is not a file.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath

from dakd_core.errors import ConfigError
from dakd_core.storage import ObjectStore, open_store, pvc_path


class _StoreTree:
    """The keys under one store root, listed lazily once: files, and each prefix's children."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._dirs: dict[str, tuple[set[str], set[str]]] | None = None  # dir key -> (subdirs, files)

    def _index(self) -> dict[str, tuple[set[str], set[str]]]:
        if self._dirs is None:
            dirs: dict[str, tuple[set[str], set[str]]] = {"": (set(), set())}
            for key in self.store.list():
                if key.endswith("/"):
                    continue  # folder marker object
                parts = key.split("/")
                for depth in range(len(parts) - 1):
                    parent, child = "/".join(parts[:depth]), parts[depth]
                    dirs.setdefault(parent, (set(), set()))[0].add(child)
                    dirs.setdefault("/".join(parts[: depth + 1]), (set(), set()))
                dirs["/".join(parts[:-1])][1].add(parts[-1])
            self._dirs = dirs
        return self._dirs

    def is_dir(self, key: str) -> bool:
        index = self._index()
        # The root counts as a directory only when something is stored under it.
        return key in index and (key != "" or any(index[""]))

    def is_file(self, key: str) -> bool:
        parent, _, name = key.rpartition("/")
        entry = self._index().get(parent)
        return bool(key) and entry is not None and name in entry[1]

    def children(self, key: str) -> tuple[list[str], list[str]]:
        subdirs, files = self._index().get(key, (set(), set()))
        return sorted(subdirs), sorted(files)


class StorePath:
    """A file or prefix under an object-store dataset root; ``str()`` is its full URI."""

    __slots__ = ("_tree", "key")

    def __init__(self, tree: _StoreTree, key: str = ""):
        self._tree = tree
        self.key = key

    # -- pure path operations
    def __truediv__(self, other: str | PurePosixPath) -> StorePath:
        rel = PurePosixPath(other).as_posix() if not isinstance(other, str) else other
        parts = [p for p in f"{self.key}/{rel}".split("/") if p and p != "."]
        return StorePath(self._tree, "/".join(parts))

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> StorePath:
        return StorePath(self._tree, self.key.rpartition("/")[0])

    def relative_to(self, other: StorePath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(PurePosixPath(other.key or "."))

    # -- questions answered from the root's listing
    def is_dir(self) -> bool:
        return self._tree.is_dir(self.key)

    def is_file(self) -> bool:
        return self._tree.is_file(self.key)

    def walk(self):
        """(directory, subdirectory names, file names), top-down, like os.walk."""
        pending = [self] if self.is_dir() else []
        while pending:
            top = pending.pop(0)
            subdirs, files = self._tree.children(top.key)
            yield top, subdirs, files
            pending[:0] = [top / d for d in subdirs]

    def glob(self, pattern: str) -> list[StorePath]:
        """Directories and files matching a relative pattern of ``*``/literal segments."""
        found = [self]
        for segment in pattern.split("/"):
            nxt = []
            for base in found:
                subdirs, files = self._tree.children(base.key)
                nxt += [base / n for n in subdirs + files if fnmatch.fnmatchcase(n, segment)]
            found = nxt
        return found

    # -- object reads (StoreError naming the URI when it fails)
    def read_bytes(self) -> bytes:
        return self._tree.store.get_bytes(self.key)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    # -- identity
    def __str__(self) -> str:
        return self._tree.store.url(self.key) if self.key else self._tree.store.uri

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: StorePath) -> bool:
        return self.key < other.key

    def __reduce__(self):
        # A process-pool worker gets the root URI and key, not the root's whole listing.
        return _restore, (self._tree.store.uri, self.key)


AnyPath = Path | StorePath


def _restore(root_uri: str, key: str) -> StorePath:
    return StorePath(_StoreTree(open_store(root_uri)), key)


def source_path(location: str | Path | StorePath, field: str = "root") -> Path | StorePath:
    """A dataset root (or one file) as a ``Path`` or ``StorePath``; ConfigError naming ``field``
    for a scheme that is neither a path, ``file://``, ``pvc://`` nor ``s3://``."""
    if isinstance(location, (Path, StorePath)):
        return location
    text = str(location)
    if text.startswith("s3://"):
        return StorePath(_StoreTree(open_store(text.rstrip("/"))))
    if text.startswith("pvc://"):
        return Path(pvc_path(text, field))
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" in text:
        raise ConfigError(f"field '{field}': {text} is not a directory, file://, pvc://CLAIM/path or s3:// URI")
    return Path(text)


def source_file(location: str | Path | StorePath, field: str) -> Path | StorePath:
    """One file (a split list, a label) given as a path or URI: like ``source_path``, but an
    ``s3://`` URI names an object, addressed under its parent prefix."""
    text = str(location)
    if isinstance(location, str) and text.startswith("s3://"):
        parent, _, name = text.rpartition("/")
        if not name or parent == "s3:/":
            raise ConfigError(f"field '{field}': {text} names no object")
        return StorePath(_StoreTree(open_store(parent)), name)
    return source_path(location, field)
