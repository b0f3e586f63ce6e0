"""The container images of the pipeline's components, by tag or pinned to a digest.

Tags come from the environment at compile time: `DAKD_IMAGE` (GPU stages, the CUDA image) and
`DAKD_CPU_IMAGE` (default: `DAKD_IMAGE` + `-cpu`), defaulting to the release tags that
`docker/build.py --version-tag` builds. A tag can move; a digest cannot. `docker/build.py --push`
records the digest the registry returned for every tag it pushed in a lock file
(docker/images.lock.json: {"<name>:<tag>": "<name>@sha256:<64 hex>"}), and
`dakd compile --images LOCK` compiles the pipeline with those `name@sha256:...` references.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from dakd_core import __version__
from dakd_core.errors import ConfigError

DEFAULT_IMAGE = f"ghcr.io/dakd/dakd:{__version__}"
IMAGE_ENV = "DAKD_IMAGE"
CPU_IMAGE_ENV = "DAKD_CPU_IMAGE"
DEFAULT_LOCK = "docker/images.lock.json"
# name@sha256:<64 lowercase hex>: the only digest algorithm registries hand out for images
_DIGEST_REF = re.compile(r"(?P<name>[^@\s]+)@sha256:[0-9a-f]{64}")


def component_images(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(GPU image, CPU image) the components are compiled with."""
    environ = os.environ if environ is None else environ
    image = environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    return image, environ.get(CPU_IMAGE_ENV) or f"{image}-cpu"


def repository(tag_ref: str) -> str:
    """`registry:5000/team/dakd:0.1.0` -> `registry:5000/team/dakd` (a registry port is no tag)."""
    name, sep, tag = tag_ref.rpartition(":")
    return name if sep and "/" not in tag else tag_ref


def load_lock(path: str | os.PathLike) -> dict[str, str]:
    """The lock file's {tag reference: digest reference}, every entry checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: image lock file not found (docker/build.py --push writes it)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON image lock file: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: an image lock file is a non-empty JSON object "
                          '{"<name>:<tag>": "<name>@sha256:<64 hex digits>"}')
    for tag_ref, pinned in data.items():
        match = _DIGEST_REF.fullmatch(pinned) if isinstance(pinned, str) else None
        if match is None:
            raise ConfigError(f"{path}: {tag_ref}: {pinned!r} is not <name>@sha256:<64 hex digits>")
        if match["name"] != repository(tag_ref):
            raise ConfigError(f"{path}: {tag_ref}: the digest reference {pinned} names another repository")
    return data


def pinned_environ(lock_path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """DAKD_IMAGE / DAKD_CPU_IMAGE set to the digests the lock records for the images `environ`
    selects; an image the lock does not know is an error (never a silent fallback to the tag)."""
    lock = load_lock(lock_path)
    pinned = {}
    for env, image in zip((IMAGE_ENV, CPU_IMAGE_ENV), component_images(environ)):
        if image not in lock:
            raise ConfigError(f"{lock_path}: no digest recorded for {image} (recorded: {', '.join(sorted(lock))}); "
                              "push it with docker/build.py --push, or choose the image with DAKD_IMAGE")
        pinned[env] = lock[image]
    return pinned
