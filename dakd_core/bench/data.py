"""A labelled split of built-in scenes in a store, for the benchmarks that read training data.

Rendered street scenes rather than noise: PNG decode cost depends on the content, and noise
compresses (and decodes) like no photo does.
"""

from __future__ import annotations


def write_split(store_uri: str, n: int, size: tuple[int, int]) -> str:
    """n labelled source scenes of size (H, W) as store PNGs plus their manifest; its URI."""
    from dakd_core.data.imageio import encode_png
    from dakd_core.data.manifest import write_manifest
    from dakd_core.data.synth import render_sample
    from dakd_core.labels import to_train_ids
    from dakd_core.storage import open_store

    store, rows = open_store(store_uri), []
    h, w = size
    for i in range(n):
        rgb, ids = render_sample("source", (w, h), 0, "train", i)
        rows.append({
            "sample_id": f"s{i}", "split": "train", "domain": "source", "condition": None,
            "image_uri": store.put_bytes(f"img/{i}.png", encode_png(rgb)),
            "label_uri": store.put_bytes(f"lbl/{i}.png", encode_png(to_train_ids(ids, "cityscapes"))),
            "height": h, "width": w, "sha256": "0" * 64, "class_pixels": [0] * 19,
        })
    return write_manifest(store, "manifest.parquet", rows)
