"""Where pretrained backbone weights come from (config field `backbone_weights`).

    /path/resnet101.pth, file://..., s3://..., pvc://...   a state dict of the backbone's timm
                                                            architecture (a timm classification
                                                            checkpoint: its classifier is dropped)
    timm:resnet101.tv_in1k                                  a timm pretrained tag, downloaded from
                                                            the Hugging Face hub (needs internet)

On a cluster the hub is reached once: `weights_in_store` downloads a `timm:` tag into
`{store}/weights/timm/<tag>.pth` the first time and returns that URI afterwards, so training tasks
(and offline clusters, once the file is there) read the store. The fit of the file to the backbone
is checked in `dakd_core.models.base.load_backbone_weights`.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from dakd_core.errors import ConfigError, StoreError

FIELD = "backbone_weights"
HUB_PREFIX = "timm:"


def hub_tag(spec: str) -> str | None:
    """The timm pretrained tag of a `timm:TAG` spec, else None."""
    return spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else None


def hub_store_key(tag: str) -> str:
    return f"weights/timm/{tag}.pth"


def _check_tag(tag: str) -> None:
    import timm

    if "." not in tag or tag not in timm.list_pretrained(tag):
        raise ConfigError(f"{FIELD}: '{HUB_PREFIX}{tag}' is not a timm pretrained tag "
                          f"(ARCH.TAG, e.g. {HUB_PREFIX}resnet101.tv_in1k; list: timm.list_pretrained('resnet101*'))")


def download_hub_state_dict(tag: str) -> dict[str, torch.Tensor]:
    """The full classification model's state dict of timm tag `tag` from the Hugging Face hub."""
    import dakd_core.compat  # noqa: F401  (before timm)
    import timm

    _check_tag(tag)
    try:
        return timm.create_model(tag, pretrained=True).state_dict()
    except OSError as e:  # huggingface_hub's offline / not-found errors are OSErrors
        raise ConfigError(
            f"{FIELD}: cannot download '{HUB_PREFIX}{tag}' from the Hugging Face hub ({type(e).__name__}): "
            "the task needs internet access once, or give the URI of a state dict in the store "
            f"(the online download is kept at {{store}}/{hub_store_key(tag)})") from None


def weights_in_store(spec: str, store_uri: str) -> str:
    """`timm:TAG` -> the store URI of its state dict (downloaded and uploaded the first time);
    any other spec is returned unchanged."""
    from dakd_core.storage import open_store

    tag = hub_tag(spec)
    if tag is None:
        return spec
    _check_tag(tag)
    store = open_store(store_uri)
    key = hub_store_key(tag)
    if not store.exists(key):
        buffer = io.BytesIO()
        torch.save(download_hub_state_dict(tag), buffer)
        store.put_bytes(key, buffer.getvalue())
    return store.url(key)


def read_state_dict(spec: str | Path) -> dict:
    """The object stored at `spec` (path or store URI) or downloaded for `timm:TAG`, unchecked."""
    from dakd_core.storage import read_bytes

    spec = str(spec)
    tag = hub_tag(spec)
    if tag is not None:
        return download_hub_state_dict(tag)
    if "://" in spec:
        try:
            data = read_bytes(spec)
        except StoreError as e:
            raise ConfigError(f"{FIELD}: {e}") from None
        source = io.BytesIO(data)
    else:
        if not Path(spec).is_file():
            raise ConfigError(f"{FIELD}: file not found: {spec}")
        source = spec
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt / non-tensor pickles
        raise ConfigError(f"{FIELD}: {spec} is not a loadable state dict: {e}") from None
