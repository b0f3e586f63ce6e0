"""Teacher cache: S3 round trip, values vs the live teacher, resume, fan-out/finalize, staleness."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _distill_data import H, W, make_checkpoint, make_split
from dakd_core import cache as cache_mod
from dakd_core.cache import (
    CacheConfig, TeacherCache, parse_shard, run_cache, teacher_targets, with_domain_statistics,
)
from dakd_core.cli import main as cli_main
from dakd_core.data.dataset import ManifestDataset
from dakd_core.errors import ConfigError, DataError, StoreError
from dakd_core.models.checkpoint import load_model


def _setup(store):
    src = make_split(store, "src", "source", 3, seed=1)
    tgt = make_split(store, "tgt", "target", 2, seed=2, labelled=False)
    teacher = make_checkpoint(f"{store}/teacher.pt", seed=0)
    return src, tgt, teacher


# uint8: rint (0.5 / 255) and the renormalisation over 19 classes after it (dequantize_probs)
@pytest.mark.parametrize("dtype, tol", [("uint8", 1.0 / 255 * 2), ("fp16", 2e-3)])
def test_cache_on_s3_matches_live_teacher(s3_store, dtype, tol):
    src, tgt, teacher_uri = _setup(s3_store)
    cfg = CacheConfig(teacher=teacher_uri, manifests=[src, tgt], store=s3_store, name="t1",
                      dtype=dtype, shard_size=2, device="cpu")
    result = run_cache(cfg)
    assert result.index_uri == f"{s3_store}/teacher_cache/t1/index.parquet"
    assert (result.num_samples, result.shards_written, result.shards_skipped) == (5, 3, 0)

    cache = TeacherCache(result.index_uri)
    assert len(cache) == 5 and "tgt_001" in cache
    teacher, _ = load_model(teacher_uri)
    teacher.eval()
    for manifest in (src, tgt):
        ds = ManifestDataset(manifest, train=False, with_labels=False)
        images = torch.stack([ds[i]["image"] for i in range(len(ds))])
        # source images are labelled with the teacher's statistics re-estimated on them (3 images
        # in batches of 1: without a size they keep their own), target images with the checkpoint's
        labeller = with_domain_statistics(teacher, images.split(1)) if manifest == src else teacher
        live = teacher_targets(labeller, images)
        for i, row in enumerate(ds.rows):
            got = cache.get(row["sample_id"])
            assert got["main"].shape == tuple(live["main"][i].shape) == (19, H // 8, W // 8)
            np.testing.assert_allclose(got["main"], live["main"][i].numpy(), atol=tol)
            np.testing.assert_allclose(got["aux"], live["aux"][i].numpy(), atol=tol)
            np.testing.assert_allclose(got["main"].sum(0), 1.0, atol=1e-5)
            assert got["label"].shape == (H, W) and got["label"].dtype == np.uint8
            assert (got["label"] == live["label"][i].numpy()).mean() > 0.99
            np.testing.assert_allclose(got["confidence"], live["confidence"][i].numpy(), atol=1 / 255)

    # Stored probability maps per image vs fp32 main + aux maps at output stride: the goal
    # is <= 25 % (uint8 is 25 % before zlib; the full-resolution label and confidence PNGs come on
    # top and are counted in bytes_written)
    fp32 = 2 * 19 * (H // 8) * (W // 8) * 4
    maps = sum(r["main_nbytes"] + r["aux_nbytes"] for r in cache._rows.values())
    assert maps / 5 <= 0.25 * fp32 * (1.0 if dtype == "uint8" else 2.5)
    assert result.bytes_written > maps


def test_source_statistics_are_the_mean_and_variance_of_the_source_inputs():
    """with_domain_statistics: each BatchNorm layer's running mean / variance become the cumulative
    mean and unbiased variance of that layer's inputs over every batch (hand-computed from a hook),
    the weights and the model's own statistics stay as they were."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    before = net[1].running_mean.clone()
    batches = [torch.randn(2, 3, 6, 6) + 3.0, torch.randn(2, 3, 6, 6) - 1.0]
    estimate = with_domain_statistics(net, batches)
    with torch.no_grad():
        seen = torch.cat([net[0](b) for b in batches])  # the BN layer's inputs, both batches
    per_channel = seen.transpose(0, 1).reshape(4, -1)
    # momentum None = cumulative average of the two batches' statistics (equal-sized batches)
    mean = torch.stack([net[0](b).detach().transpose(0, 1).reshape(4, -1).mean(1) for b in batches]).mean(0)
    var = torch.stack([net[0](b).detach().transpose(0, 1).reshape(4, -1).var(1) for b in batches]).mean(0)
    torch.testing.assert_close(estimate[1].running_mean, mean)
    torch.testing.assert_close(estimate[1].running_var, var)
    assert not torch.allclose(estimate[1].running_mean, per_channel.mean(1) * 0)  # moved from zero
    torch.testing.assert_close(net[1].running_mean, before)  # the model itself untouched
    assert not estimate.training and all(not p.requires_grad for p in estimate.parameters())
    torch.testing.assert_close(estimate[0].weight, net[0].weight)
    # no batch at all: the copy keeps the model's statistics
    torch.testing.assert_close(with_domain_statistics(net, [])[1].running_var, net[1].running_var)


def test_source_images_get_source_statistics_and_zero_keeps_the_checkpoints(file_store):
    """The adapted teacher's running statistics are the target's: the cache labels source images
    with statistics re-estimated on them (bn_source_images), target images with its own; with
    bn_source_images 0 every image gets the checkpoint's (the cache before per-domain statistics)."""
    src, tgt, teacher_uri = _setup(file_store)
    teacher, _ = load_model(teacher_uri)
    teacher.eval()
    ds = ManifestDataset(src, train=False, with_labels=False)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    own = teacher_targets(teacher, images)["main"].numpy()
    # the first two source images, one per batch (no size: each keeps its own)
    two = teacher_targets(with_domain_statistics(teacher, images[:2].split(1)), images)["main"].numpy()
    for n, expected in ((0, own), (2, two)):
        cfg = CacheConfig(teacher=teacher_uri, manifests=[src, tgt], store=file_store, name=f"bn{n}", dtype="fp16",
                          device="cpu", bn_source_images=n, batch_size=2)
        cache = TeacherCache(run_cache(cfg).index_uri)
        for i, row in enumerate(ds.rows):
            np.testing.assert_allclose(cache.get(row["sample_id"])["main"], expected[i], atol=2e-3)
    assert np.abs(own - two).max() > 0.02  # the two statistics give visibly different targets


def test_reader_removes_its_local_shard_copies(file_store):
    src, tgt, teacher_uri = _setup(file_store)
    result = run_cache(CacheConfig(teacher=teacher_uri, manifests=[src], store=file_store, name="t3",
                                   shard_size=2, device="cpu"))
    cache = TeacherCache(result.index_uri)
    cache.get("src_000")
    local = Path(cache._local_dir)
    assert local.is_dir() and any(local.iterdir())
    # a /tmp cleaner removing the folder mid-run costs a re-download, not a crash
    shutil.rmtree(local)
    assert cache.get("src_001")["label"].dtype == np.uint8 and local.is_dir()
    del cache
    gc.collect()
    assert not local.exists()


def test_interrupted_run_resumes_without_recomputing(file_store, monkeypatch):
    src, tgt, teacher_uri = _setup(file_store)
    cfg = CacheConfig(teacher=teacher_uri, manifests=[src, tgt], store=file_store, name="r",
                      shard_size=2, batch_size=2, size=(H, W), device="cpu")
    calls = []
    real = cache_mod._teacher_forward

    def crash_on_second(teacher, images):
        calls.append(images.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(teacher, images)

    monkeypatch.setattr(cache_mod, "_teacher_forward", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_cache(cfg)
    root = f"{file_store}/teacher_cache/r"
    from dakd_core.storage import open_store

    store = open_store(root)
    assert store.exists("shards/shard_00000.parquet") and not store.exists("shards/shard_00001.parquet")
    assert not store.exists("index.parquet")  # nothing half-published

    calls.clear()
    monkeypatch.setattr(cache_mod, "_teacher_forward", lambda t, x: (calls.append(x.shape[0]), real(t, x))[1])
    result = run_cache(cfg)
    assert (result.shards_skipped, result.shards_written) == (1, 2)
    assert sum(calls) == 3  # only the 3 images of the unfinished shards went through the teacher
    assert result.index_uri and len(TeacherCache(result.index_uri)) == 5

    calls.clear()
    again = run_cache(cfg)
    assert (again.shards_written, again.shards_skipped, calls) == (0, 3, [])


def test_shard_fanout_then_finalize_via_cli(file_store, capsys):
    src, tgt, teacher_uri = _setup(file_store)
    common = ["cache-teacher", "--teacher", teacher_uri, "--manifest", src, "--manifest", tgt,
              "--store", file_store, "--name", "fan", "--shard-size", "2", "--dtype", "fp16", "--device", "cpu"]
    assert cli_main(common + ["--shard", "0/2"]) == 0
    index = f"{file_store}/teacher_cache/fan/index.parquet"
    from dakd_core.storage import uri_exists

    assert not uri_exists(index)
    assert cli_main(common + ["--finalize"]) == 2  # shard 1 is missing
    assert "shards [1]" in capsys.readouterr().err
    assert cli_main(common + ["--shard", "1/2"]) == 0  # the last slice publishes the index
    assert uri_exists(index)
    assert cli_main(common + ["--finalize"]) == 0
    cache = TeacherCache(index)
    assert cache.dtype == "fp16" and len(cache) == 5


def test_stale_cache_and_bad_input_are_errors(file_store):
    src, tgt, teacher_uri = _setup(file_store)
    result = run_cache(CacheConfig(teacher=teacher_uri, manifests=[tgt], store=file_store, name="s", device="cpu"))
    cache = TeacherCache(result.index_uri)
    cache.check(cache_mod.sha256_uri(teacher_uri))  # the right teacher passes
    other = make_checkpoint(f"{file_store}/other.pt", seed=5)
    with pytest.raises(DataError, match="stale"):
        cache.check(cache_mod.sha256_uri(other))
    from dakd_core.data.manifest import read_manifest

    with pytest.raises(DataError, match="no entry for sample 'src_000'"):
        cache.check(None, read_manifest(src), src)
    with pytest.raises(DataError, match="src_000"):
        cache.get("src_000")
    with pytest.raises(DataError, match="appears in both"):
        run_cache(CacheConfig(teacher=teacher_uri, manifests=[src, src], store=file_store, name="d", device="cpu"))
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard("2/2")
    with pytest.raises(StoreError):
        TeacherCache(f"{file_store}/teacher_cache/missing/index.parquet")
