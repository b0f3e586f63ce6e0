"""What the training loops share: device/DDP setup, seeding, resumable data, poly lr, AMP, the NaN
guard, checkpoint/resume, best-checkpoint selection and result publication.

Each loop (pretrain, adapt, distill) stays a plain `for step` loop; it calls into `RunKeeper` once
per step for the bookkeeping that must be identical everywhere:

    keeper = RunKeeper(cfg, "pretrain", dist, eval_model=model, snapshot=snapshot)
    payload = keeper.resume()              # None, or the last.pt dict of an identical config
    ... restore the loop's own objects from payload ...
    with keeper.tracking():                # MLflow stage run (rank 0) + progress bar
        for step in keeper.steps(start):   # 1-based
            losses = check_finite(step, {...})   # before any optimizer.step
            ...
            keeper.end_step(step, losses)  # log / evaluate / checkpoint
    return keeper.finish()                 # publishes result.json LAST

Exact resume: a checkpoint holds every network, optimiser, scheduler, GradScaler, the python /
numpy / torch RNG states of every rank and the position of every data stream. Augmentation is a
pure function of (seed, epoch, index) and DataLoaders draw their seeds from private generators,
so the global RNGs only see what an uninterrupted run sees too.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from dakd_core.errors import ConfigError, DataError, Preempted, StoreError, TrainingError
from dakd_core.evaluation.metrics import confusion_matrix, miou_from_confusion
from dakd_core.models.checkpoint import load_checkpoint, save_checkpoint
from dakd_core.storage import ObjectStore, open_store

LAST = "last.pt"
BEST = "best.pt"
RESULT = "result.json"
# Metrics the tracking server did not take (server down), kept beside the checkpoints until sent:
# one file per MLflow run (a retry of the stage sends an earlier attempt's to that attempt's run).
PENDING_METRICS = "mlflow_pending_metrics/{run_id}.json"
CHECKPOINT_KEY = "checkpoints/step_{:07d}.pt"


# ----------------------------------------------------------------------------- device, DDP, seeds


def default_device() -> torch.device:
    """cuda if available, else cpu; the environment variable DAKD_DEVICE overrides."""
    name = os.environ.get("DAKD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_device(name, "DAKD_DEVICE")


def resolve_device(name: str, field_name: str = "device") -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field_name}: '{name}' is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field_name}: '{name}' requested but CUDA is not available")
    return device


def progress_disabled() -> bool:
    return os.environ.get("DAKD_NO_PROGRESS", "") not in ("", "0")


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    device: torch.device
    # Host-side decisions between steps (the stop flag) go through a gloo group of CPU tensors:
    # through NCCL their value would be read back from the GPU, which waits for every kernel
    # queued before (a host sync per step). None: the default group, gloo already on CPU runs.
    control_group: object | None = None  # a torch.distributed ProcessGroup

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str | None = None) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else a single process.

    Backend: nccl on CUDA (one GPU per LOCAL_RANK), gloo on CPU.
    """
    device = resolve_device(device_name) if device_name else default_device()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # every rank creates it here, at the same point: new_group is itself a collective
    control = torch_dist.new_group(backend="gloo") if torch_dist.get_backend() == "nccl" else None
    return Dist(rank, world_size, device, control)


_LEASE: contextvars.ContextVar = contextvars.ContextVar("dakd_writer_lease", default=None)
# Config fields naming an object the stage reads (road_reference and backbone_weights may also
# name a method or a hub tag: only their URIs are objects).
_INPUT_FIELDS = ("source_manifest", "select_manifest", "target_manifest", "gate_manifest", "init", "teacher",
                 "teacher_cache", "road_reference", "backbone_weights")
_NOT_OBJECTS = ("init", "imagenet")


def open_output(uri: str, name: str) -> ObjectStore:
    """The store of an output location, or a ConfigError naming the field and its unusable URI;
    commands open their output first, so a bad one is refused before any input is read."""
    try:
        return open_store(uri)
    except StoreError as e:
        raise ConfigError(f"field '{name}': {e}") from None


def require_objects(inputs: list[tuple[str, str]]) -> None:
    """ConfigError naming the field and value of the first (field, URI) whose object is missing or
    whose URI is unusable. Stages call it before taking a writer lease: a refused run creates nothing."""
    from dakd_core.storage import uri_exists

    for name, uri in inputs:
        try:
            found = uri_exists(uri)
        except StoreError as e:
            raise ConfigError(f"field '{name}': {uri!r}: {e}") from None
        if not found:
            raise ConfigError(f"field '{name}': no object at {uri!r}")


def check_inputs(cfg) -> None:
    """ConfigError naming the field and value when the network is unknown or an input object is
    missing. Called before the writer lease, so a refused run creates nothing under --out."""
    from dakd_core.models.registry import list_models
    from dakd_core.models.weights import hub_tag

    if cfg.model not in list_models():
        raise ConfigError(f"field 'model': unknown network {cfg.model!r} (known: {', '.join(list_models())})")
    # source-free adaptation never opens source_manifest (AdaptConfig): a given one need not exist
    unread = {"source_manifest"} if getattr(cfg, "method", None) == "sfda" else set()
    require_objects([(name, uri) for name in _INPUT_FIELDS
                     if name not in unread and (uri := getattr(cfg, name, None)) and uri not in _NOT_OBJECTS
                     and hub_tag(uri) is None])


class StopSignals:
    """SIGTERM and SIGINT during a training stage: the first is remembered and acted on at the next
    step boundary (`RunKeeper.steps`: checkpoint, then `Preempted`); a second one stops the process
    at once, the default way. A signal this process ignores (nohup) stays ignored, and handlers
    are only installed from the main thread (Python delivers signals there only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._received)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _received(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: no more waiting for the step to end
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"dakd: {signal.Signals(signum).name} received: stopping after the current step "
              "(checkpoint, MLflow run KILLED, writer lease released); send it again to stop at once",
              file=sys.stderr, flush=True)


STOP = StopSignals()


def launch(train: Callable, cfg):
    """Run `train(cfg, dist)` inside this process's (possibly single-process) group, rank 0 holding
    the writer lease of `cfg.out` (a second run into the same --out is refused; see lease.py).
    SIGTERM/SIGINT end it gracefully at a step boundary (`StopSignals`, `RunKeeper.steps`)."""
    with STOP:
        return _launch(train, cfg)


def _launch(train: Callable, cfg):
    from dakd_core.lease import WriterLease

    dist = init_distributed(cfg.device)
    try:
        if not dist.is_main:  # only rank 0 writes
            return train(cfg, dist)
        out = open_output(cfg.out, "out")
        check_inputs(cfg)
        if cfg.log_mlflow:
            from dakd_core.tracking import check_reachable

            check_reachable()  # before the lease: a run refused for its tracking server leaves nothing
        with WriterLease(out, f"training output {cfg.out}") as lease:
            token = _LEASE.set(lease)
            try:
                return train(cfg, dist)
            finally:
                _LEASE.reset(token)
    finally:
        shutdown_distributed(dist)


def shutdown_distributed(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap_ddp(module: nn.Module, dist: Dist) -> nn.Module:
    if not dist.enabled:
        return module
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind a DDP wrapper (for evaluation, saving, frozen forward passes)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(module: nn.Module):
    """Skip DDP's gradient all-reduce for a backward whose gradients a later backward completes."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def bn_running_stats_frozen(module: nn.Module, frozen: bool = True):
    """BatchNorm layers in training mode keep normalising with the batch's own statistics, but
    their running averages (what evaluation and export use) do not move (momentum 0).

    Adaptation alternates source and target forward passes through one network: with trainable
    BatchNorm each domain is normalised with its own batch statistics during training, while the
    running averages mix both, so the evaluated model normalises target images with statistics
    half made of source images. Freezing them for the source passes keeps target statistics only
    (AdaBN, Li et al. 2016); docs/learning.md has the measured effect.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.training and m.track_running_stats] if frozen else []
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng(device: torch.device) -> dict:
    """This process's RNG states as plain types (checkpoints are loaded with weights_only=True).
    On CUDA, the generator of `device` only: the one this rank draws from. Every visible GPU's
    (torch.cuda.get_rng_state_all) would not restore on a node with fewer GPUs."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng(dist: Dist) -> list[dict]:
    """Every rank's RNG state, in rank order (a collective: every rank must call it)."""
    own = capture_rng(dist.device)
    if not dist.enabled:
        return [own]
    gathered: list = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, own)
    return gathered


# ----------------------------------------------------------------------------- optimisation helpers


def lr_factor(step: int, iterations: int, schedule: str = "poly", power: float = 0.9, warmup: int = 0) -> float:
    """The multiplier of every group's initial lr at `step` (0-based): linear warm-up over `warmup`
    steps, then poly (1 - t) ** power or cosine (1 + cos(pi t)) / 2, t the fraction of the run."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, step / iterations)
    return (1.0 - t) ** power if schedule == "poly" else 0.5 * (1.0 + math.cos(math.pi * t))


def lr_schedule(optimizer: torch.optim.Optimizer, iterations: int, schedule: str = "poly", power: float = 0.9,
                warmup: int = 0):
    """LambdaLR applying `lr_factor` to every group (heads keep their multiplier)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, iterations, schedule, power, warmup))


def poly_schedule(optimizer: torch.optim.Optimizer, iterations: int, power: float):
    """lr = initial_lr * (1 - step / iterations) ** power per param group (heads keep their 10x)."""
    return lr_schedule(optimizer, iterations, "poly", power)


def amp_enabled(cfg, device: torch.device) -> bool:
    """Mixed precision only on CUDA: CPU autocast is slow and changes results."""
    return bool(cfg.amp) and device.type == "cuda"


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    # A disabled scaler is a pass-through (scale() returns the loss, step() just steps).
    return torch.amp.GradScaler(device.type, enabled=enabled)


@dataclass
class StepLosses:
    """One step's loss terms, not yet read: still on the device that computed them."""

    step: int
    names: tuple[str, ...]
    values: torch.Tensor  # (len(names),) float32, detached


def _reads_now(device: torch.device) -> bool:
    """Whether loss values are read (and checked) in the step that computed them. On the CPU they
    are already in host memory; on a GPU reading them waits for the step's kernels to finish (a
    host sync), so the host could not queue the next step meanwhile: they are read together later
    (RunKeeper.end_step, `read_losses`)."""
    return device.type == "cpu"


def check_finite(step: int, terms: dict[str, torch.Tensor]) -> dict[str, float] | StepLosses:
    """Loss terms as floats; a NaN/inf term stops training with a TrainingError naming it.

    Call it before any optimizer.step(), so that on the CPU the weights (and the last checkpoint)
    stay the last good ones. On a GPU the terms come back unread (`StepLosses`): `RunKeeper.end_step`
    reads the steps since its last read in one copy at every log, evaluation and checkpoint step, and
    a non-finite term stops training there, naming its step, before anything is evaluated, logged or
    checkpointed: the weights the later steps changed are never published.
    """
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if not _reads_now(values.device):
        return StepLosses(step, tuple(terms), values)
    return _finite(step, tuple(terms), values.tolist())


def read_losses(pending: list[StepLosses]) -> list[dict[str, float]]:
    """The loss terms of `pending` steps as floats, read from the device in one copy (one sync);
    TrainingError naming the first non-finite term, its step and the steps read together."""
    if not pending:
        return []
    flat = torch.cat([p.values for p in pending]).cpu().tolist()
    read, at = [], 0
    span = f"{pending[0].step}-{pending[-1].step}" if len(pending) > 1 else str(pending[0].step)
    for p in pending:
        read.append(_finite(p.step, p.names, flat[at:at + len(p.names)], span))
        at += len(p.names)
    return read


def _finite(step: int, names: tuple[str, ...], values: list[float], span: str = "") -> dict[str, float]:
    for name, value in zip(names, values):
        if not math.isfinite(value):
            read = f" (read with the losses of steps {span})" if span and span != str(step) else ""
            raise TrainingError(
                f"step {step}: loss term '{name}' is {value}{read}; training stopped, "
                "the last good checkpoint is kept (lower the lr or check the inputs)"
            )
    return dict(zip(names, values))


# ----------------------------------------------------------------------------- data


class ResumableShardSampler(Sampler):
    """An endless stream of (epoch, index) keys: epoch after epoch of DistributedSampler's
    shuffled shard for this rank, starting `start` keys in (the position a checkpoint stored).

    Keys carry the epoch so the dataset can seed each sample's augmentation with it while one
    DataLoader iterator (and its workers) lives for the whole run.
    """

    def __init__(self, size: int, seed: int, dist: Dist, start: int = 0):
        self.shard = DistributedSampler(
            range(size), num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_epoch = len(self.shard)
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            self.shard.set_epoch(epoch)
            for index in list(self.shard)[offset:]:
                yield (epoch, index)
            epoch, offset = epoch + 1, 0


class BatchStream:
    """Endless batches of one dataset for one rank, whose position survives a checkpoint."""

    def __init__(self, dataset, batch_size: int, seed: int, dist: Dist, num_workers: int, name: str):
        per_rank = len(dataset) // dist.world_size
        if per_rank < 1:
            raise DataError(
                f"{name}: {getattr(dataset, 'manifest_uri', 'dataset')} has {len(dataset)} samples, "
                f"fewer than the {dist.world_size} processes"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.dist, self.num_workers, self.name = dist, num_workers, name
        self.consumed = 0  # samples this rank has taken from the stream
        self._iter: Iterator | None = None

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
        self._iter = None

    def next(self) -> dict:
        if self._iter is None:
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=ResumableShardSampler(len(self.dataset), self.seed, self.dist, self.consumed),
                num_workers=self.num_workers,
                pin_memory=self.dist.device.type == "cuda",
                # A private generator: creating this iterator must not consume the global torch
                # RNG, or a resumed run would draw different dropout masks afterwards.
                generator=torch.Generator().manual_seed(self.seed),
                persistent_workers=False,
            )
            self._iter = iter(loader)
        batch = next(self._iter)
        self.consumed += self.batch_size
        return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch on `device`; images (4-D floating tensors) in channels-last layout, the layout
    `channels_last` puts the networks in."""
    def move(v):
        if isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point():
            return v.to(device, memory_format=torch.channels_last, non_blocking=True)
        return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v

    return {k: move(v) for k, v in batch.items()}


def channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` on `device` with its 4-D weights in channels-last (NHWC) layout. Same arithmetic; on
    the CPU (oneDNN) a training step of the CPU-scale networks is faster with NHWC inputs and
    weights (`benchmarks/bench_layout.py`, batch 8 at 64x128, 1 thread: swiftnet_tiny 0.092 -> 0.084 s,
    swiftnet_thin 0.264 -> 0.209 s), and on the GPU it is the layout AMP's tensor-core convolutions want."""
    return module.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def evaluate_miou(model: nn.Module, dataset, num_classes: int, device: torch.device, amp: bool, num_workers: int = 0) -> float:
    """mIoU of `model` (main head, logits upsampled to the label size) on a labelled dataset."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
    )
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for batch in tqdm(loader, desc="select mIoU", leave=False, disable=progress_disabled()):
        batch = to_device(batch, device)
        with autocast(device, amp):
            logits = model(batch["image"]).main
        logits = nn.functional.interpolate(logits.float(), size=batch["label"].shape[-2:], mode="bilinear", align_corners=False)
        cm += confusion_matrix(logits.argmax(1), batch["label"], num_classes)
    model.train(was_training)
    return miou_from_confusion(cm)


# ----------------------------------------------------------------------------- checkpoints, results


@dataclass
class TrainResult:
    best_checkpoint_uri: str
    last_checkpoint_uri: str
    metrics: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None


def config_identity(cfg) -> dict:
    """The config fields that determine the trained weights (execution-only fields left out)."""
    from dakd_core.train.configs import EXECUTION_FIELDS

    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in EXECUTION_FIELDS}


def identity_hash(identity: dict) -> str:
    """The hash of a config identity (`config_identity`): what names a stage's output."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(cfg) -> str:
    return identity_hash(config_identity(cfg))


class RunKeeper:
    """Checkpoints, selection, logging and the result of one training stage run.

    `snapshot(step)` returns the loop's state (networks, optimisers, streams...) as extra
    checkpoint entries; it is called on every rank at checkpoint steps (it may gather across
    ranks) and only rank 0 writes. `eval_model` is the plain (unwrapped) segmenter.
    """

    def __init__(self, cfg, stage: str, dist: Dist, eval_model: nn.Module, snapshot: Callable[[int], dict]):
        self.cfg, self.stage, self.dist = cfg, stage, dist
        self.eval_model, self.snapshot = eval_model, snapshot
        self.store: ObjectStore = open_store(cfg.out)
        self.lease = _LEASE.get()  # None outside launch() (and on ranks > 0, which publish nothing)
        self.hash = config_hash(cfg)
        self.amp = amp_enabled(cfg, dist.device)
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.last_losses: dict[str, float] = {}
        self._loss_sums: dict[str, float] = {}
        self._loss_count = 0
        self._unread: list[StepLosses] = []  # the GPU steps' losses since the last read (check_finite)
        self._select = None
        if cfg.select_manifest:
            from dakd_core.data.dataset import ManifestDataset

            self._select = ManifestDataset(
                cfg.select_manifest, train=False, with_labels=True, resize=cfg.select_resize,
                memo_mib=cfg.data_memo_mib,
            )
        self._saved_step = 0  # the step of the newest resumable checkpoint (last.pt)
        self._tracking = False  # inside this rank-0 process's MLflow stage run
        self._run_id: str | None = None
        self._outbox = None  # tracking.MetricOutbox of the stage run
        self._bar = None
        self._started = time.perf_counter()

    # -- resume
    def resume(self) -> dict | None:
        """The last checkpoint of an identical config, None for a fresh run; TrainingError if
        `{out}/last.pt` belongs to a different config (naming the differing fields)."""
        if not self.store.exists(LAST):
            return None
        uri = self.store.url(LAST)
        payload = load_checkpoint(uri, map_location="cpu")
        if payload.get("stage") != self.stage:
            raise TrainingError(f"{uri} was written by stage '{payload.get('stage')}', not '{self.stage}'")
        if payload.get("config_hash") != self.hash:
            old, new = payload.get("config", {}), self.cfg.model_dump(mode="json")
            fields = sorted(k for k in set(old) | set(new) if k not in _execution_fields() and old.get(k) != new.get(k))
            raise TrainingError(
                f"{uri} belongs to a run with a different config (fields {fields}); "
                f"use another --out or the same settings to resume"
            )
        self.best_metric = payload.get("best_metric")
        self.best_step = payload.get("best_step")
        self.last_losses = dict(payload.get("last_losses", {}))
        world = payload.get("world_size", 1)
        rng = payload["rng"]
        if world != self.dist.world_size:
            print(
                f"dakd {self.stage}: resuming a {world}-process run with {self.dist.world_size} "
                "processes: data order and random streams will differ from an uninterrupted run",
                file=sys.stderr,
            )
        restore_rng(rng[self.dist.rank % len(rng)], self.dist.device)
        self._saved_step = int(payload["step"])
        return payload

    # -- the loop
    def steps(self, start: int) -> Iterator[int]:
        """Steps start+1 .. iterations. Before each one, a stop signal received meanwhile (on any
        rank) ends the stage: a checkpoint of the last finished step if it has none, then
        `Preempted` (the MLflow run becomes KILLED, launch() releases the writer lease)."""
        self._started = time.perf_counter()  # the rate counts the loop, not MLflow/startup
        self._bar = tqdm(
            range(start + 1, self.cfg.iterations + 1), initial=start, total=self.cfg.iterations,
            desc=self.stage, disable=progress_disabled() or not self.dist.is_main, dynamic_ncols=True,
        )
        for step in self._bar:
            signum = self._stop_signal()
            if signum:
                self._preempt(step - 1, signum)
            yield step

    def _stop_signal(self) -> int:
        """The stop signal received by this rank, or under DDP by any rank (all stop together:
        a rank leaving alone would hang the others in their next collective); 0 if none.

        Under DDP the ranks' flags are reduced on the host, in Dist.control_group (gloo, CPU
        tensors): the ranks' processes meet, their GPUs keep running the queued steps. Through
        NCCL, reading the reduced flag back would wait for every kernel queued on the GPU so far
        (a host sync per step, the wait check_finite's deferred read avoids)."""
        signum = STOP.signum or 0
        if not self.dist.enabled:
            return signum
        flag = torch.tensor([signum], dtype=torch.int64)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self.dist.control_group)
        return int(flag.item())

    def _preempt(self, done: int, signum: int) -> None:
        if done > self._saved_step:
            self._checkpoint(done, best=False, periodic=True)
        where = f"{self.store.url(LAST)} (step {self._saved_step})" if self._saved_step else "none yet"
        raise Preempted(f"{signal.Signals(signum).name}: {self.stage} stopped after step {done} of "
                        f"{self.cfg.iterations}; resume point {where}: rerun the same command to continue", signum)

    @contextlib.contextmanager
    def tracking(self):
        """The MLflow stage run (rank 0 only), with the whole validated config as params; none
        (and no MLflow import) with `log_mlflow` off: result.json is then the run's only record."""
        if not (self.dist.is_main and self.cfg.log_mlflow):
            try:
                yield None
            finally:
                if self._bar is not None:
                    self._bar.close()
            return
        from dakd_core.tracking import MetricOutbox, stage_run

        import mlflow

        with stage_run(self.stage, params=self.cfg.model_dump(mode="json")) as run:
            active = mlflow.active_run()
            self._run_id = active.info.run_id if active is not None else None
            self._outbox = MetricOutbox(self._run_id)
            self._send_kept()
            self._tracking = True
            try:
                yield run
            finally:
                self._tracking = False
                if self._bar is not None:
                    self._bar.close()

    def end_step(self, step: int, losses: dict[str, float] | StepLosses) -> None:
        final = step == self.cfg.iterations
        log = step % self.cfg.log_every == 0 or final
        evaluate = self._select is not None and (step % self.cfg.eval_every == 0 or final)
        periodic = step % self.cfg.checkpoint_every == 0 or final
        if isinstance(losses, StepLosses):
            self._unread.append(losses)
            if log or evaluate or periodic:  # nothing is logged, evaluated or saved unchecked
                self._read_losses()
        else:
            self._account(losses)
        if log:
            self._log({f"train/{k}": v / self._loss_count for k, v in self._loss_sums.items()}, step)
            self._loss_sums, self._loss_count = {}, 0
        improved = False
        if evaluate:
            if self.dist.is_main:
                miou = evaluate_miou(self.eval_model, self._select, self.cfg.num_classes, self.dist.device, self.amp, self.cfg.num_workers)
                self._log({"select/miou": miou}, step)
                if self.best_metric is None or miou > self.best_metric:
                    self.best_metric, self.best_step, improved = miou, step, True
            improved = self._agree(improved)  # rank 0 decided; all ranks must enter the checkpoint
        if self._select is None and final:
            self.best_step, improved = step, True  # nothing to select on: the final weights
        if periodic or improved:
            self._checkpoint(step, improved, periodic)

    def _account(self, losses: dict[str, float]) -> None:
        """A step's (read, finite) losses into the logged means and the progress bar."""
        self.last_losses = losses
        for k, v in losses.items():
            self._loss_sums[k] = self._loss_sums.get(k, 0.0) + v
        self._loss_count += 1
        if self._bar is not None and self.dist.is_main:
            self._bar.set_postfix(loss=f"{sum(losses.values()):.4f}", refresh=False)

    def _read_losses(self) -> None:
        """Read and check the unread steps' losses (TrainingError at a non-finite one)."""
        if not self._unread:
            return
        pending, self._unread = self._unread, []
        for losses in read_losses(pending):
            self._account(losses)

    def _agree(self, flag: bool) -> bool:
        if not self.dist.enabled:
            return flag
        value = torch.tensor([int(flag)], device=collective_device(self.dist))
        torch_dist.broadcast(value, src=0)
        return bool(value.item())

    def _checkpoint(self, step: int, best: bool, periodic: bool) -> None:
        self._read_losses()  # a stop signal's checkpoint too: no weights after an unchecked loss
        payload = self.snapshot(step)
        rng = gather_rng(self.dist)  # a collective: every rank gets here
        if periodic:
            self._saved_step = step  # on every rank: _preempt's decision to checkpoint must agree
        if not self.dist.is_main:
            return
        payload.update(
            stage=self.stage, config=self.cfg.model_dump(mode="json"), config_hash=self.hash, step=step,
            rng=rng, world_size=self.dist.world_size, best_metric=self.best_metric, best_step=self.best_step,
            last_losses=dict(self.last_losses),
        )
        with self._publishing(f"the checkpoints of step {step} in {self.store.uri}"):
            # Order matters for a kill at any moment: step file, then best, then last (the resume point).
            if periodic:
                save_checkpoint(self.store, payload, CHECKPOINT_KEY.format(step))
            if best:
                save_checkpoint(self.store, payload, BEST)
            if periodic:
                save_checkpoint(self.store, payload, LAST)
            if self._outbox is not None and self._outbox.pending:  # with the checkpoint they belong to
                self.store.put_bytes(self._pending_key(), self._outbox.to_json())

    def _publishing(self, what: str):
        """Inside: this run still holds the writer lease of --out (see lease.py)."""
        return self.lease.publishing(what) if self.lease is not None else contextlib.nullcontext()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._tracking:
            self._outbox.log(metrics, step)  # kept while the tracking server does not answer

    def finish(self, steps_run: int, model: nn.Module | None = None) -> TrainResult:
        """Publish result.json (last, after every checkpoint it names) and return the result.

        Under DDP, `model` is first checked to be identical on every rank."""
        if model is not None:
            verify_replicas(model, self.dist)
        metrics = {f"train/{k}": v for k, v in self.last_losses.items()}
        if self.best_metric is not None:
            metrics["select/best_miou"] = self.best_metric
        metrics["best_step"] = self.best_step
        metrics["steps"] = self.cfg.iterations
        result = TrainResult(self.store.url(BEST), self.store.url(LAST), metrics, self._run_id)
        if self.dist.is_main:
            if steps_run:
                rate = steps_run / max(time.perf_counter() - self._started, 1e-9)
                metrics["steps_per_second"] = rate
            document = {"stage": self.stage, "config_hash": self.hash, **result.__dict__}
            with self._publishing(self.store.url(RESULT)):
                self.store.put_bytes(RESULT, json.dumps(document, indent=2, sort_keys=True).encode())
            if self._tracking:
                self._sync_tracking(result, document)
        return result

    def _sync_tracking(self, result: TrainResult, document: dict) -> None:
        """After result.json: the kept metrics, tags and result artifact to MLflow; if the server
        still does not answer, a TrackingError (exit 2) naming the published result and the kept
        metrics, which stay in --out (the trained checkpoints are published either way)."""
        from dakd_core import tracking
        from dakd_core.errors import TrackingError

        synced = self._outbox.flush()
        if synced:
            try:
                tracking.set_tags({"dakd.best_checkpoint": result.best_checkpoint_uri,
                                   "dakd.last_checkpoint": result.last_checkpoint_uri})
                tracking.log_dict(document, RESULT)
            except Exception as e:
                if not tracking.server_unavailable(e):
                    raise
                synced, self._outbox.failure = False, f"{type(e).__name__}: {str(e)[:300]}"
        key = self._pending_key()
        if synced:
            if self.store.exists(key):
                with self._publishing(f"the removal of {self.store.url(key)}"):
                    self.store.delete(key)
            return
        with self._publishing(self.store.url(key)):
            self.store.put_bytes(key, self._outbox.to_json())
        raise TrackingError(
            f"{self.stage} finished and published {self.store.url(RESULT)}, but MLflow tracking server "
            f"{tracking.redact_text(tracking.tracking_uri())} did not answer ({self._outbox.failure}): "
            f"{len(self._outbox.pending)} metrics of run {self._run_id} kept at {self.store.url(key)}; "
            "a rerun sends them")

    def _pending_key(self, run_id: str | None = None) -> str:
        return PENDING_METRICS.format(run_id=run_id or self._run_id)

    def _send_kept(self) -> None:
        """Metrics earlier attempts of this stage kept (their tracking server was down) go to
        those attempts' MLflow runs now; what the server still does not take stays kept."""
        from dakd_core.tracking import MetricOutbox

        for key in self.store.list(PENDING_METRICS.partition("{")[0]):
            kept = json.loads(self.store.get_bytes(key))
            earlier = MetricOutbox(kept["mlflow_run_id"])
            earlier.pending = kept["metrics"]
            if earlier.flush():
                earlier.end_if_running()
                with self._publishing(f"the removal of {self.store.url(key)}"):
                    self.store.delete(key)

    def restore_segmenter(self, payload: dict, model, optimizer, scheduler, scaler, streams: dict) -> int:
        """Load the state every loop has (segmenter, its optimiser/schedule, scaler, data streams)
        from a resume payload; returns the step to continue after."""
        from dakd_core.models.checkpoint import load_state_into

        load_state_into(model, payload, self.store.url(LAST))
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        for name, stream in streams.items():
            stream.load_state_dict(payload["data"][name])
        return int(payload["step"])


def collective_device(dist: Dist) -> torch.device:
    """Where tensors handed to torch.distributed must live: NCCL takes CUDA tensors only, gloo CPU ones."""
    return dist.device if torch_dist.get_backend() == "nccl" else torch.device("cpu")


def verify_replicas(model: nn.Module, dist: Dist) -> None:
    """DDP keeps the replicas' parameters identical; a divergence (e.g. a rank-dependent code path)
    would silently publish rank 0's weights only, so it is an error. Buffers are not compared:
    BatchNorm running statistics are rank 0's, broadcast at the start of each forward."""
    if not dist.enabled:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().double().reshape(-1) for p in unwrap(model).parameters()])
        local = torch.stack([flat.sum(), (flat * flat).sum()])
    local = local.to(collective_device(dist))
    gathered = [torch.zeros_like(local) for _ in range(dist.world_size)]
    torch_dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise TrainingError(f"DDP replicas diverged: weight checksums per rank {[g.tolist() for g in gathered]}")


def _execution_fields() -> frozenset:
    from dakd_core.train.configs import EXECUTION_FIELDS

    return EXECUTION_FIELDS


# ----------------------------------------------------------------------------- pieces every loop builds


def fused_update(module: nn.Module) -> dict:
    """Optimiser keyword arguments: `fused=True` where torch has fused kernels for the device of
    `module`'s parameters (CPU, CUDA). One fused call updates every parameter; the loop over
    tensors it replaces costs the CPU-scale networks a measurable share of each step
    (`benchmarks/bench_step_kernels.py`: an AdamW step of swiftnet_tiny on 1 CPU thread, 9.2 ->
    1.4 ms). Same update rule, different summation order."""
    devices = {p.device.type for p in module.parameters()}
    return {"fused": True} if devices and devices <= {"cpu", "cuda"} else {}


def adam(module: nn.Module, lr: float, betas) -> torch.optim.Adam:
    """Adam for an auxiliary network (discriminators, ROAD's classifiers, SFDA's generator)."""
    return torch.optim.Adam(module.parameters(), lr=lr, betas=tuple(betas), **fused_update(module))


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The segmenter's optimiser from the recipe fields: SGD with AdaptSegNet's heads at 10x lr, or
    AdamW with one lr for every parameter (its per-parameter step sizes make the 10x unnecessary)."""
    if cfg.optimizer == "adamw":
        groups = [dict(g, lr=cfg.lr, lr_mult=1.0) for g in model.param_groups(cfg.lr)]
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused_update(model))
    return torch.optim.SGD(model.param_groups(cfg.lr), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **fused_update(model))


def build_segmenter(cfg, dist: Dist):
    """(model on the device, optimiser, lr schedule) from the shared recipe fields."""
    from dakd_core.models import create_model

    model = create_model(cfg.model, num_classes=cfg.num_classes, backbone_weights=cfg.backbone_weights)
    channels_last(model, dist.device)
    optimizer = build_optimizer(cfg, model)
    return model, optimizer, lr_schedule(optimizer, cfg.iterations, cfg.schedule, cfg.poly_power,
                                         cfg.warmup_iterations)


def image_stream(cfg, dist: Dist, manifest_uri: str, resize, with_labels: bool, name: str, seed_offset: int = 0) -> BatchStream:
    """Augmented training batches (random scale, crop `cfg.crop`, flip; photometric jitter on
    labelled images when `cfg.photometric`) of one manifest."""
    from dakd_core.data.dataset import ManifestDataset

    dataset = ManifestDataset(
        manifest_uri, crop=cfg.crop, train=True, with_labels=with_labels, seed=cfg.seed + seed_offset,
        resize=resize, scale_range=cfg.scale_range, flip=cfg.flip, photometric=cfg.photometric and with_labels,
        memo_mib=cfg.data_memo_mib,
    )
    return BatchStream(dataset, cfg.batch_size, cfg.seed + seed_offset, dist, cfg.num_workers, name)


def source_seg_terms(output, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """CE (ignore 255) of both heads on labelled source images; weight aux with cfg.aux_weight."""
    from dakd_core.losses import segmentation_loss

    return {"seg_main": segmentation_loss(output.main, labels), "seg_aux": segmentation_loss(output.aux, labels)}
