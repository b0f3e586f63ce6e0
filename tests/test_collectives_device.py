"""The tensors handed to torch.distributed sit on the process group's device: NCCL (CUDA runs)
takes CUDA tensors only, so a CPU tensor there fails every multi-GPU task at its end. Proved
without a GPU: the collectives are replaced by recorders that apply NCCL's rule with the `meta`
device standing in for CUDA, and gloo's rule (CPU tensors) for a CPU run."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dakd_core.train import engine
from dakd_core.train.engine import Dist, RunKeeper, verify_replicas


class Handed(Exception):
    """Raised by the recorders once the rule is met: a meta tensor's value cannot be read back,
    and the call itself is what is checked."""


CONTROL = object()  # stands in for the gloo group init_distributed makes beside NCCL


class Collectives:
    """torch.distributed stand-in for one backend: every tensor a collective receives is recorded
    and must be on `device` (nccl: the rank's GPU, gloo: the CPU)."""

    def __init__(self, monkeypatch, backend: str, device: torch.device):
        self.backend, self.device, self.seen = backend, device, []
        self.others: list[int] = []  # per all_reduce call: the largest value the other ranks hold
        for name in ("broadcast", "all_gather", "all_reduce"):
            monkeypatch.setattr(engine.torch_dist, name, getattr(self, name))
        monkeypatch.setattr(engine.torch_dist, "get_backend", lambda group=None: backend)

    def _check(self, *tensors) -> None:
        for t in tensors:
            self.seen.append(t.device)
            if t.device != self.device:
                raise RuntimeError(f"{self.backend}: tensor on {t.device}, the process group's device is {self.device}")

    def broadcast(self, tensor, src=0, group=None, async_op=False):
        self._check(tensor)
        if self.device.type == "meta":
            raise Handed

    def all_reduce(self, tensor, op=None, group=None, async_op=False):  # ReduceOp.MAX, as the stop flag's
        if group is CONTROL:  # the host-side gloo group of Dist.control_group: CPU tensors
            self.seen.append(("control", tensor.device))
            if tensor.device.type != "cpu":
                raise RuntimeError(f"gloo control group: tensor on {tensor.device}")
        else:
            self._check(tensor)
        if self.others:
            tensor.clamp_(min=self.others.pop(0))

    def all_gather(self, tensor_list, tensor, group=None, async_op=False):
        self._check(*tensor_list, tensor)
        if self.device.type == "meta":
            raise Handed
        for out in tensor_list:  # a world of identical replicas
            out.copy_(tensor)


def _keeper(dist: Dist):
    return SimpleNamespace(dist=dist)  # _agree reads only the run's Dist


def test_nccl_collectives_get_tensors_on_the_gpu(monkeypatch):
    gpu = torch.device("meta")  # stands in for cuda:LOCAL_RANK
    nccl = Collectives(monkeypatch, "nccl", gpu)
    dist = Dist(rank=0, world_size=2, device=gpu)
    with pytest.raises(Handed):
        RunKeeper._agree(_keeper(dist), True)
    with pytest.raises(Handed):
        verify_replicas(nn.Linear(3, 2), dist)
    assert nccl.seen == [gpu, gpu, gpu, gpu]  # broadcast's flag; all_gather's 2 outputs and its input


def test_gloo_collectives_get_cpu_tensors_and_still_decide(monkeypatch):
    gloo = Collectives(monkeypatch, "gloo", torch.device("cpu"))
    dist = Dist(rank=0, world_size=2, device=torch.device("cpu"))
    assert RunKeeper._agree(_keeper(dist), True) is True
    assert RunKeeper._agree(_keeper(dist), False) is False
    verify_replicas(nn.Linear(3, 2), dist)  # identical replicas: no error
    assert gloo.seen == [torch.device("cpu")] * 5


def test_nccl_stop_flag_is_reduced_on_the_host_and_read_in_its_own_step(monkeypatch):
    # Before: the flag went through NCCL on the GPU, and reading it back waited for every kernel
    # queued so far (a host sync per step); the control group reduces a CPU tensor among the hosts.
    gpu = torch.device("meta")
    nccl = Collectives(monkeypatch, "nccl", gpu)
    nccl.others = [0, int(signal.SIGTERM)]  # another rank got SIGTERM during step 1
    keeper = SimpleNamespace(dist=Dist(rank=0, world_size=2, device=gpu, control_group=CONTROL))
    assert [RunKeeper._stop_signal(keeper) for _ in range(2)] == [0, signal.SIGTERM]
    assert nccl.seen == [("control", torch.device("cpu"))] * 2


def test_gloo_stop_flags_are_read_alike_on_every_rank(monkeypatch):
    gloo = Collectives(monkeypatch, "gloo", torch.device("cpu"))
    gloo.others = [0, int(signal.SIGTERM)]  # another rank got SIGTERM during step 1
    keeper = SimpleNamespace(dist=Dist(rank=0, world_size=2, device=torch.device("cpu")))
    assert [RunKeeper._stop_signal(keeper) for _ in range(2)] == [0, signal.SIGTERM]  # seen in the same step
    assert gloo.seen == [torch.device("cpu")] * 2


def test_init_distributed_makes_a_gloo_control_group_beside_nccl_only(monkeypatch):
    made = []
    monkeypatch.setattr(engine.torch_dist, "is_initialized", lambda: True)
    monkeypatch.setattr(engine.torch_dist, "new_group", lambda backend=None: made.append(backend) or CONTROL)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(engine.torch_dist, "get_backend", lambda group=None: "gloo")
    assert engine.init_distributed("cpu").control_group is None and made == []
    monkeypatch.setattr(engine.torch_dist, "get_backend", lambda group=None: "nccl")
    dist = engine.init_distributed("cpu")
    assert dist.control_group is CONTROL and made == ["gloo"] and dist.rank == 1
