"""The decoded-sample memo: its byte budget, what it keeps, and that datasets and the teacher cache
give the same samples with it as without it while reading each stored object once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _distill_data import make_checkpoint, make_split
from dakd_core.cache import CacheConfig, TeacherCache, run_cache
from dakd_core.data import dataset as dataset_mod
from dakd_core.data.dataset import ManifestDataset
from dakd_core.data.memo import MIB, DecodedMemo


def _loader(nbytes: int, calls: list):
    def load():
        calls.append(nbytes)
        return (np.zeros(nbytes, np.uint8), None)
    return load


def test_memo_keeps_values_until_the_budget_is_spent():
    memo, calls = DecodedMemo(1), []
    first = memo.get("a", _loader(600 * 1024, calls))
    # 600 KiB + 600 KiB > 1 MiB: the second value is returned but not kept.
    second = memo.get("b", _loader(600 * 1024, calls))
    assert memo.used == 600 * 1024 and len(memo) == 1
    assert memo.get("a", _loader(600 * 1024, calls)) is first
    assert memo.get("b", _loader(600 * 1024, calls)) is not second
    # 400 KiB still fits next to the first 600 KiB (1 MiB = 1024 KiB).
    memo.get("c", _loader(400 * 1024, calls))
    assert memo.used == 1000 * 1024 and len(memo) == 2
    assert len(calls) == 4  # a once, b twice, c once


def test_kept_arrays_are_read_only_and_a_zero_budget_keeps_nothing():
    memo = DecodedMemo(1)
    image, _ = memo.get(0, _loader(10, []))
    with pytest.raises(ValueError, match="read-only"):
        image[0] = 1
    empty, calls = DecodedMemo(0), []
    empty.get(0, _loader(10, calls))
    empty.get(0, _loader(10, calls))
    assert len(calls) == 2 and len(empty) == 0 and empty.used == 0 and MIB == 1 << 20


def test_dataset_reads_each_object_once_and_gives_the_same_items(file_store, monkeypatch):
    manifest = make_split(file_store, "src", "source", 4, seed=3)
    reads = []
    real_read = dataset_mod.read_row_image
    monkeypatch.setattr(dataset_mod, "read_row_image", lambda row, uri: reads.append(row["sample_id"]) or real_read(row, uri))
    kwargs = dict(crop=(32, 48), train=True, with_labels=True, seed=5, flip=True)
    plain = ManifestDataset(manifest, **kwargs)
    kept = ManifestDataset(manifest, memo_mib=64, **kwargs)
    for epoch in range(2):
        for index in range(4):
            a, b = plain[(epoch, index)], kept[(epoch, index)]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    # the plain dataset read every sample in both epochs, the memoised one once
    assert len(reads) == 4 * 2 + 4 and len(kept.memo) == 4


def test_teacher_cache_memo_serves_records_without_their_shard(file_store):
    src = make_split(file_store, "src", "source", 3, seed=1)
    teacher = make_checkpoint(f"{file_store}/teacher.pt", seed=0)
    result = run_cache(CacheConfig(teacher=teacher, manifests=[src], store=file_store, name="memo",
                                   shard_size=3, device="cpu"))
    plain, kept = TeacherCache(result.index_uri), TeacherCache(result.index_uri, memo_mib=64)
    first = kept.get("src_000")
    # With the local shard copy gone, only the memo can answer without downloading it again.
    shutil.rmtree(Path(kept._local_dir))
    again = kept.get("src_000")
    assert not Path(kept._local_dir).exists()
    expected = plain.get("src_000")
    for key in ("main", "aux", "label", "confidence"):
        np.testing.assert_array_equal(first[key], expected[key])
        np.testing.assert_array_equal(again[key], expected[key])
    # each get returns fresh float maps: a caller writing into one does not change the next
    again["main"][:] = 0
    assert kept.get("src_000")["main"].sum() > 0
