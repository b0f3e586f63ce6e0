"""Failures only a multi-GPU (torchrun, DDP) or CUDA run would meet, shown on the CPU.

DDP's checks are per process: a parameter that requires a gradient and never gets one stops the
next iteration whatever the world size, so a one-process gloo group with `Dist.enabled` forced on
runs a loop exactly as each torchrun rank would (networks wrapped in DistributedDataParallel,
no_sync, the collectives of RunKeeper)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as torch_dist

from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.train import adapt, engine

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
