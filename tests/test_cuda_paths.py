"""Failures only a multi-GPU (torchrun, DDP) or CUDA run would meet, shown on the CPU.

DDP's checks are per process: a parameter that requires a gradient and never gets one stops the
next iteration whatever the world size, so a one-process gloo group with `Dist.enabled` forced on
runs a loop exactly as each torchrun rank would (networks wrapped in DistributedDataParallel,
no_sync, the collectives of RunKeeper)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as torch_dist

from dakd_core.losses import kl_distill, segmentation_loss
from dakd_core.models import create_model
from dakd_core.models.checkpoint import load_checkpoint, make_payload, save_checkpoint
from dakd_core.storage import open_store
from dakd_core.train import adapt, distill, engine
from dakd_core.train.engine import Dist, RunKeeper, StepLosses, gather_rng

from _methods_data import method_config, pretrained_pair


@pytest.fixture(scope="module")
def data(tmp_path_factory, _mlflow_template_db):
    return pretrained_pair(tmp_path_factory, _mlflow_template_db)


@pytest.fixture
def ddp(tmp_path, monkeypatch):
    """A one-process gloo group; the loops take it for a torchrun group (launch() destroys it at the
    end of the run, as it does under torchrun)."""
    torch_dist.init_process_group("gloo", init_method=(tmp_path / "pg").as_uri(), rank=0, world_size=1)
    monkeypatch.setattr(engine.Dist, "enabled", property(lambda self: True))
    yield
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def _sfda(data, out):
    return method_config(data, out, "sfda", iterations=3, sfda_patches=2, checkpoint_every=3, eval_every=100,
                         log_mlflow=False)


def test_sfda_trains_under_ddp_as_in_one_process(data, tmp_path, ddp, monkeypatch):
    # Before: "Expected to have finished reduction in the prior iteration" at iteration 2 (the aux
    # head, which no SFDA loss reads, required gradients DDP waited for).
    trained = load_checkpoint(adapt.run(_sfda(data, tmp_path / "ddp")).last_checkpoint_uri)
    assert not torch_dist.is_initialized()  # launch() ended the group
    monkeypatch.undo()  # Dist.enabled is world_size > 1 again: a plain single-process run
    plain = load_checkpoint(adapt.run(_sfda(data, tmp_path / "plain")).last_checkpoint_uri)
    init = load_checkpoint(data["init"])["model"]
    assert trained["step"] == 3
    for name, value in trained["model"].items():  # one rank's DDP run is the plain run, bit for bit
        assert torch.equal(value, plain["model"][name]), name
    aux = [k for k in init if k.startswith("aux_head.")]
    assert aux and all(torch.equal(trained["model"][k], init[k]) for k in aux)  # never trained, as before
    assert not torch.equal(trained["model"]["main_head.branches.0.weight"], init["main_head.branches.0.weight"])


def _gpus(monkeypatch, count: int) -> tuple[torch.Generator, ...]:
    """torch.cuda's RNG functions as on a machine with `count` GPUs: torch's own code over a table
    of `count` generators (CPU generators, seeded 1000 + index, stand in for the devices')."""
    generators = tuple(torch.Generator().manual_seed(1000 + i) for i in range(count))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "default_generators", generators)
    for name, stand_in in (("_lazy_init", lambda: None), ("is_initialized", lambda: True),
                           ("_lazy_call", lambda callback, **kw: callback()),
                           ("device_count", lambda: count), ("current_device", lambda: 0)):
        monkeypatch.setattr(torch.cuda.random, name, stand_in)
    return generators


def test_a_rank_resumes_its_gpu_random_stream_on_a_node_with_fewer_gpus(tmp_path, monkeypatch):
    four = _gpus(monkeypatch, 4)
    for r, generator in enumerate(four):
        torch.rand(r + 1, generator=generator)  # each rank's stream has moved on by the checkpoint
    records = [gather_rng(Dist(0, 1, torch.device("cuda", r)))[0] for r in range(4)]  # rank r on cuda:r
    at_checkpoint = four[1].get_state()
    store = open_store(tmp_path.as_uri())
    save_checkpoint(store, make_payload(create_model("deeplabv2_tiny"), 5, stage="pretrain", config_hash="h",
                                        rng=records, world_size=4), engine.LAST)

    two = _gpus(monkeypatch, 2)  # resumed with 2 processes on a 2-GPU node: rank 1 on cuda:1
    keeper = SimpleNamespace(store=store, stage="pretrain", hash="h", dist=Dist(1, 2, torch.device("cuda", 1)))
    # Before: every GPU's state was saved and restored, and GPUs 2 and 3 do not exist here
    # (IndexError: tuple index out of range, in torch.cuda.set_rng_state_all).
    assert RunKeeper.resume(keeper)["step"] == 5
    assert torch.equal(two[1].get_state(), at_checkpoint)  # rank 1's stream goes on where it stopped
    assert torch.equal(two[0].get_state(), torch.Generator().manual_seed(1000).get_state())  # not its GPU


def test_a_distillation_step_reads_nothing_back_from_the_device():
    """On a GPU, reading a device value (a Python branch on it, .item()) waits for every queued
    kernel: the host cannot queue the next work meanwhile. The `meta` device has no values, so a
    step that runs there reads none. Before: the cross-entropy (`bool(labels != 255).any()`) and
    every masked mean (`if sum(w) <= 0`) stopped it ("Tensor.item() cannot be called on meta tensors")."""
    meta = torch.device("meta")
    cfg = distill.DistillConfig(source_manifest="s", target_manifest="t", init="i", teacher_cache="c", out="o",
                                pseudo_threshold=0.5)
    model = create_model("deeplabv2_tiny").to(meta)
    images = torch.randn(2, 3, 32, 64, device=meta)
    labels = torch.randint(0, 19, (2, 32, 64), device=meta)
    targets = {"main": torch.rand(2, 19, 4, 8, device=meta), "aux": torch.rand(2, 19, 4, 8, device=meta),
               "label": labels, "confidence": torch.rand(2, 32, 64, device=meta),
               "valid": torch.ones(2, 32, 64, dtype=torch.bool, device=meta)}
    out = model(images)
    terms = distill.source_terms(out, labels, cfg, targets)  # CE of both heads + L_pseudoT (one log-softmax)
    terms.update(distill.distill_terms(out, targets, cfg, "t"))  # KL, MSE (masked means), L_pseudoT
    assert set(terms) == {"seg_main", "seg_aux", "s_pseudo", "t_kl_main", "t_kl_aux", "t_mse_aux", "t_pseudo"}
    (terms["seg_main"] + distill.weighted_distill(terms, cfg, "t")).backward()
    assert isinstance(engine.check_finite(1, terms), StepLosses)  # read later, with other steps'

    # the sync-free forms keep their values: no labelled pixel / an empty mask give 0 and zero gradients
    logits = torch.randn(1, 19, 4, 8, requires_grad=True)
    ignored = segmentation_loss(logits, torch.full((1, 8, 16), 255))
    empty = kl_distill(logits, torch.rand(1, 19, 4, 8), mask=torch.zeros(1, 8, 16, dtype=torch.bool))
    (ignored + empty).backward()
    assert ignored.item() == 0.0 and empty.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
