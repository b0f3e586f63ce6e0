"""Training engine, pretrain and adapt on deeplabv2_tiny with 64x32 images (CPU, seconds)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dakd_core.cli import main as cli_main
from dakd_core.config import build_config
from dakd_core.data.dataset import ManifestDataset
from dakd_core.errors import ConfigError, TrainingError
from dakd_core.losses import segmentation_loss
from dakd_core.models import create_model
from dakd_core.models.checkpoint import load_checkpoint, load_model
from dakd_core.train import adapt, engine, pretrain
from dakd_core.train.configs import AdaptConfig, PretrainConfig

from _loop_spies import LossSpy, bn_moves
from _train_data import make_split, tiny_fields


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    store = tmp_path_factory.mktemp("store").as_uri()
    with pytest.MonkeyPatch.context() as mp:
        # stage runs of this module's fixtures go to a throw-away MLflow db, not ./mlruns.db
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/m.db")
        yield {
            "store": store,
            "source": make_split(store, "src", 6, "source", seed=0),
            "target": make_split(store, "tgt", 6, "target", seed=1, labelled=False),
            "select": make_split(store, "tune", 3, "target", seed=2),
        }


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre").as_uri()
    cfg = build_config(PretrainConfig, None, **tiny_fields(source_manifest=data["source"], out=out, iterations=4))
    return pretrain.run(cfg)


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_errors_name_the_field(tmp_path):
    base = dict(source_manifest="m", out="o")
    for bad, field in [({"lr": -1.0}, "lr"), ({"iterations": 0}, "iterations"), ({"bogus": 1}, "bogus"),
                       ({"crop": [0, 8]}, "crop"), ({"aux_weight": "x"}, "aux_weight")]:
        with pytest.raises(ConfigError, match=f"field '{field}'"):
            build_config(PretrainConfig, None, **base, **bad)
    with pytest.raises(ConfigError, match="field 'lambda_adv_main'"):
        build_config(AdaptConfig, None, **base, init="c", target_manifest="t", lambda_adv_main=-1e-3)
    with pytest.raises(ConfigError, match="field 'init'"):
        build_config(AdaptConfig, None, **base, target_manifest="t")
    # defaults are the published ones
    cfg = build_config(AdaptConfig, None, **base, init="c", target_manifest="t")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.poly_power, cfg.d_lr, cfg.d_betas) == (
        2.5e-4, 0.9, 5e-4, 0.9, 1e-4, (0.9, 0.99))
    assert (cfg.lambda_adv_main, cfg.lambda_adv_aux, cfg.aux_weight) == (1e-3, 2e-4, 0.1)
    # CLI flags override the YAML file; an unknown YAML key fails the command with exit 2
    yaml = tmp_path / "c.yaml"
    yaml.write_text("lr: 0.5\niterations: 7\nsource_manifest: m\nout: o\n")
    from dakd_core.cli import build_parser
    from dakd_core.cli._config_args import config_from_args

    args = build_parser().parse_args(["pretrain", "--config", str(yaml), "--lr", "0.25", "--crop", "16", "32"])
    cfg = config_from_args(PretrainConfig, args)
    assert (cfg.lr, cfg.iterations, cfg.crop) == (0.25, 7, (16, 32))
    yaml.write_text("lr: 0.5\nunknown_key: 1\n")
    assert cli_main(["pretrain", "--config", str(yaml), "--source-manifest", "m", "--out", "o"]) == 2


def test_pretrain_lowers_source_loss_and_tracks_in_mlflow(data, tmp_path, mlflow_uri):
    import mlflow

    cfg = build_config(PretrainConfig, None, **tiny_fields(source_manifest=data["source"], select_manifest=data["select"],
                                       out=(tmp_path / "run").as_uri(), iterations=12, eval_every=6))
    ds = ManifestDataset(data["source"], train=False, with_labels=True)
    batch = torch.stack([ds[i]["image"] for i in range(len(ds))]), torch.stack([ds[i]["label"] for i in range(len(ds))])
    torch.manual_seed(cfg.seed)  # the loop's initialisation
    initial = create_model(cfg.model).eval()
    result = pretrain.run(cfg)
    final, _ = load_model(result.last_checkpoint_uri)
    with torch.no_grad():
        before = segmentation_loss(initial(batch[0]).main, batch[1]).item()
        after = segmentation_loss(final.eval()(batch[0]).main, batch[1]).item()
    assert after < 0.6 * before

    out = Path(tmp_path / "run")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{n:07d}.pt" for n in (2, 4, 6, 8, 10, 12)]
    published = json.loads((out / "result.json").read_text())
    assert published["last_checkpoint_uri"] == result.last_checkpoint_uri
    assert published["metrics"]["best_step"] in (6, 12)
    best = load_checkpoint(result.best_checkpoint_uri)
    assert best["step"] == published["metrics"]["best_step"]
    assert best["best_metric"] == pytest.approx(result.metrics["select/best_miou"])

    run = mlflow.get_run(result.mlflow_run_id)
    assert float(run.data.params["lr"]) == 0.01 and run.data.params["model"] == "deeplabv2_tiny"
    assert "train/seg_main" in run.data.metrics and "select/miou" in run.data.metrics
    assert run.data.tags["dakd.last_checkpoint"] == result.last_checkpoint_uri
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/seg_main")
    assert len(history) == 12


@pytest.mark.parametrize("method", ["adaptsegnet", "advent"])
def test_adapt_alternates_generator_and_discriminators(data, pretrained, tmp_path, method):
    cfg = build_config(AdaptConfig, None, **tiny_fields(source_manifest=data["source"], target_manifest=data["target"],
                                    init=pretrained.last_checkpoint_uri, out=(tmp_path / "a").as_uri(),
                                    iterations=3, method=method, lambda_adv_main=0.1, lambda_adv_aux=0.02))
    result = adapt.run(cfg)
    ckpt = load_checkpoint(result.last_checkpoint_uri)
    init = load_checkpoint(pretrained.last_checkpoint_uri)
    assert ckpt["method"] == method and ckpt["step"] == 3
    # both discriminators and the segmenter stepped every iteration
    for lvl in ("main", "aux"):
        states = ckpt["d_optimizers"][lvl]["state"]
        assert states and all(int(s["step"]) == 3 for s in states.values())
    assert all("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())
    assert not _weights_equal(ckpt["model"], init["model"])


class _StubDiscriminator(torch.nn.Module):
    """Logit c + i for every pixel of batch row i, whatever the map: hand-computable BCEs."""

    def __init__(self, num_classes, ndf):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        row = torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1)
        return self.c + row + 0 * x.sum(dim=(1, 2, 3), keepdim=True)  # keeps the graph to the maps


def test_adapt_adversarial_losses_hand_valued_on_a_stub_discriminator(data, pretrained, tmp_path, monkeypatch):
    """Step 1 of adapt with both discriminators stubbed (batch 2): the generator term is BCE of
    D(target maps) against the SOURCE label 0, D's term averages source -> 0 and target -> 1;
    the segmenter backpropagates seg + lambda_adv-weighted adv, the discriminators d_main + d_aux."""
    monkeypatch.setattr(adapt, "Discriminator", _StubDiscriminator)
    losses = LossSpy(monkeypatch)
    cfg = build_config(AdaptConfig, None, **tiny_fields(source_manifest=data["source"], target_manifest=data["target"],
                                    init=pretrained.last_checkpoint_uri, out=(tmp_path / "a").as_uri(),
                                    iterations=1, lambda_adv_main=0.3, lambda_adv_aux=0.07))
    adapt.run(cfg)

    def bce(logit, label):
        return math.log1p(math.exp(-logit if label else logit))

    (t,), ((seg, generator, discriminator),) = losses.terms, losses.steps()
    adv = (bce(0.5, 0) + bce(1.5, 0)) / 2  # target rows 0, 1 against label 0: 1.338 (label 1 would give 0.338)
    d = ((bce(0.5, 0) + bce(1.5, 0)) / 2 + (bce(2.5, 1) + bce(3.5, 1)) / 2) / 2  # source rows 0, 1; target rows 2, 3
    for lvl in ("main", "aux"):
        assert t[f"adv_{lvl}"] == pytest.approx(adv, rel=1e-6)
        assert t[f"d_{lvl}"] == pytest.approx(d, rel=1e-6)
    assert seg == pytest.approx(t["seg_main"] + cfg.aux_weight * t["seg_aux"], rel=1e-6)
    assert generator == pytest.approx((0.3 + 0.07) * adv, rel=1e-6)
    assert discriminator == pytest.approx(2 * d, rel=1e-6)


def test_discriminators_see_maps_at_d_input_scale_of_the_crop():
    base = dict(source_manifest="file:///s.parquet", target_manifest="file:///t.parquet", init="file:///i.pt",
                out="file:///o", model="deeplabv2_tiny", crop=(64, 128))
    logits = torch.randn(2, 19, 32, 64)
    dist = engine.Dist(rank=0, world_size=1, device=torch.device("cpu"))
    full = adapt.OutputSpaceAdversary(AdaptConfig(**base), dist)._input(logits, (64, 128))
    half = adapt.OutputSpaceAdversary(AdaptConfig(**base, d_input_scale=0.5), dist)._input(logits, (64, 128))
    # AdaptSegNet: upsampled to the crop; at 0.5 the stride-2 logits are already the size: no resampling
    assert full.shape == (2, 19, 64, 128) and half.shape == (2, 19, 32, 64)
    assert torch.allclose(half, logits.softmax(1))
    upsampled = torch.nn.functional.interpolate(logits, size=(64, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(full, upsampled.softmax(1))
    with pytest.raises(ConfigError, match="d_input_scale"):
        build_config(AdaptConfig, None, **base, d_input_scale=0)


def test_adapt_resume_from_an_earlier_checkpoint_is_exact(data, pretrained, tmp_path):
    fields = tiny_fields(source_manifest=data["source"], target_manifest=data["target"],
                         init=pretrained.last_checkpoint_uri, iterations=4, num_workers=1)
    full = adapt.run(build_config(AdaptConfig, None, **fields, out=(tmp_path / "full").as_uri()))
    part = tmp_path / "part"
    # a run that died right after its step-2 checkpoint: last.pt is the step-2 state
    (part / "checkpoints").mkdir(parents=True)
    step2 = (tmp_path / "full" / "checkpoints" / "step_0000002.pt").read_bytes()
    (part / "last.pt").write_bytes(step2)
    resumed = adapt.run(build_config(AdaptConfig, None, **fields, out=part.as_uri()))
    a, b = load_checkpoint(full.last_checkpoint_uri), load_checkpoint(resumed.last_checkpoint_uri)
    assert _weights_equal(a["model"], b["model"])
    for lvl in ("main", "aux"):
        assert _weights_equal(a["discriminators"][lvl], b["discriminators"][lvl])
    # another config at the same --out: refused, naming the differing fields
    with pytest.raises(TrainingError, match=r"lambda_adv_main"):
        adapt.run(build_config(AdaptConfig, None, **fields, out=part.as_uri(), lambda_adv_main=0.5))


def _nan_images_from_step_4(monkeypatch) -> None:
    """Batches of 2: steps 1-3 are clean, step 4 and later see images of NaNs."""
    original = ManifestDataset.__getitem__
    calls = {"n": 0}

    def poisoned(self, key):
        item = original(self, key)
        calls["n"] += 1
        if calls["n"] > 6:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item

    monkeypatch.setattr(ManifestDataset, "__getitem__", poisoned)


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    _nan_images_from_step_4(monkeypatch)
    out = tmp_path / "nan"
    cfg = build_config(PretrainConfig, None, **tiny_fields(source_manifest=data["source"], out=out.as_uri(), iterations=6, checkpoint_every=1))
    with pytest.raises(TrainingError, match=r"step 4: loss term 'seg_main' is nan"):
        pretrain.run(cfg)
    last = load_checkpoint((out / "last.pt").as_uri())
    assert last["step"] == 3
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (out / "result.json").exists()


def test_gpu_losses_stay_on_their_device_until_read():
    terms = {"seg_main": torch.ones((), device="meta"), "seg_aux": torch.ones((), device="meta")}
    pending = engine.check_finite(7, terms)  # reading a meta tensor fails, as a CUDA read would sync
    assert isinstance(pending, engine.StepLosses)
    assert (pending.step, pending.names, pending.values.device.type) == (7, ("seg_main", "seg_aux"), "meta")
    steps = [engine.StepLosses(s, ("a", "b"), torch.tensor(v)) for s, v in ((3, [1.0, 2.0]), (4, [0.5, float("inf")]))]
    assert engine.read_losses(steps[:1]) == [{"a": 1.0, "b": 2.0}]
    with pytest.raises(TrainingError, match=r"^step 4: loss term 'b' is inf \(read with the losses of steps 3-4\)"):
        engine.read_losses(steps)


def test_deferred_loss_reads_at_log_and_checkpoint_steps_still_stop_at_a_nan_naming_its_step(data, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "_reads_now", lambda device: False)  # the CPU run takes the GPU's path
    reads, real_read = [], engine.read_losses
    monkeypatch.setattr(engine, "read_losses", lambda pending: (reads.append([p.step for p in pending]),
                                                                real_read(pending))[1])
    _nan_images_from_step_4(monkeypatch)
    out = tmp_path / "nan"
    cfg = build_config(PretrainConfig, None, **tiny_fields(source_manifest=data["source"], out=out.as_uri(),
                                                           iterations=9, checkpoint_every=3, log_every=3))
    with pytest.raises(TrainingError, match=r"step 4: loss term 'seg_main' is nan \(read with the losses of steps 4-6\)"):
        pretrain.run(cfg)
    assert reads == [[1, 2, 3], [4, 5, 6]]  # two reads in six steps, not one per step
    last = load_checkpoint((out / "last.pt").as_uri())
    assert last["step"] == 3 and last["last_losses"].keys() == {"seg_main", "seg_aux"}
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (out / "checkpoints" / "step_0000006.pt").exists() and not (out / "result.json").exists()


def test_log_mlflow_off_trains_and_publishes_without_importing_or_contacting_mlflow(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # from here on `import mlflow` raises ImportError
    # a tracking server that does not answer: a stage that checked it would stop after 3 s (exit 2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("DAKD_MLFLOW_DEADLINE_S", "3")
    out = tmp_path / "untracked"
    fields = tiny_fields(source_manifest=data["source"], select_manifest=data["select"], iterations=3, eval_every=2)
    result = pretrain.run(build_config(PretrainConfig, None, **fields, out=out.as_uri(), log_mlflow=False))
    published = json.loads((out / "result.json").read_text())
    assert published["mlflow_run_id"] is None and result.mlflow_run_id is None
    assert published["metrics"]["steps"] == 3 and published["metrics"]["best_step"] in (2, 3)
    assert load_checkpoint(published["last_checkpoint_uri"])["step"] == 3
    # log_mlflow is how the stage runs, not what it computes: a tracked rerun resumes this one
    assert load_checkpoint(published["last_checkpoint_uri"])["config_hash"] == engine.config_hash(
        build_config(PretrainConfig, None, **fields, out=out.as_uri()))
    # the same stage with tracking on does need MLflow: the switch is what kept it out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ImportError):
        pretrain.run(build_config(PretrainConfig, None, **fields, out=(tmp_path / "tracked").as_uri()))


def _cli_pretrain(data, out: Path, iterations: int) -> list[str]:
    fields = tiny_fields(source_manifest=data["source"], out=out.as_uri(), iterations=iterations, checkpoint_every=1)
    argv = [sys.executable, "-m", "dakd_core", "pretrain"]
    for k, v in fields.items():
        argv += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list) else [v])]
    return argv


def test_kill_9_at_a_random_step_then_rerun_matches_an_uninterrupted_run(data, tmp_path):
    iterations = 8
    env = {**os.environ, "DAKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    kill_after = random.Random().randint(1, iterations - 2)
    proc = subprocess.Popen(_cli_pretrain(data, killed, iterations), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = killed / "checkpoints" / f"step_{kill_after:07d}.pt"
    deadline = time.time() + 600  # generous: a loaded 2-core CI box starts torch slowly
    # step_N.pt is written before last.pt: wait for both, so the rerun has a last.pt to resume from
    last = killed / "last.pt"
    while not (marker.exists() and last.exists()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert marker.exists(), f"no checkpoint of step {kill_after} before the kill (run ended or deadline passed)"
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (killed / "result.json").exists()
    assert load_checkpoint((killed / "last.pt").as_uri())["step"] < iterations

    rerun = subprocess.run(_cli_pretrain(data, killed, iterations), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # the uninterrupted reference runs in this process (same config, one torch thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain.run(build_config(PretrainConfig, None, **tiny_fields(
            source_manifest=data["source"], out=full.as_uri(), iterations=iterations, checkpoint_every=1)))
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint((full / "last.pt").as_uri()), load_checkpoint((killed / "last.pt").as_uri())
    assert a["step"] == b["step"] == iterations
    assert _weights_equal(a["model"], b["model"]), f"killed after step {kill_after}"
    assert _weights_equal(a["optimizer"]["state"][0], b["optimizer"]["state"][0])


def test_default_device_honours_env(monkeypatch):
    monkeypatch.setenv("DAKD_DEVICE", "cpu")
    assert engine.default_device() == torch.device("cpu")
    monkeypatch.setenv("DAKD_DEVICE", "nonsense")
    with pytest.raises(ConfigError, match="DAKD_DEVICE"):
        engine.default_device()


def test_bn_running_stats_frozen_keeps_averages_but_normalises_with_the_batch():
    bn = torch.nn.BatchNorm2d(1, momentum=0.1)
    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)  # batch mean 2, biased var 1, unbiased var 2
    with engine.bn_running_stats_frozen(bn):
        y = bn(x)
        assert bn.momentum == 0.0
    assert bn.momentum == 0.1
    assert bn.running_mean.item() == 0.0 and bn.running_var.item() == 1.0
    torch.testing.assert_close(y.flatten(), torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)  # (x - 2) / 1
    bn(x)  # unfrozen: running = 0.9 * running + 0.1 * batch (unbiased variance)
    assert bn.running_mean.item() == pytest.approx(0.2) and bn.running_var.item() == pytest.approx(0.9 + 0.2)
    with pytest.raises(RuntimeError), engine.bn_running_stats_frozen(bn):
        raise RuntimeError("boom")
    assert bn.momentum == 0.1  # restored after an exception too
    bn.eval()
    with engine.bn_running_stats_frozen(bn):
        assert bn.momentum == 0.1  # eval-mode layers are left alone


@pytest.mark.parametrize("bn_statistics,source_passes_move_stats", [("target", False), ("both", True)])
def test_adapt_bn_statistics_decides_which_passes_move_the_running_averages(
        data, pretrained, tmp_path, monkeypatch, bn_statistics, source_passes_move_stats):
    """Every training-mode forward of the segmenter's first BatchNorm layer, in order: did its
    running mean move? Adaptation alternates a source pass and a target pass per iteration."""
    moved = bn_moves(monkeypatch)
    cfg = build_config(AdaptConfig, None, **tiny_fields(source_manifest=data["source"], target_manifest=data["target"],
                                    init=pretrained.last_checkpoint_uri, out=(tmp_path / "a").as_uri(),
                                    iterations=3, bn_statistics=bn_statistics))
    adapt.run(cfg)
    assert moved == [source_passes_move_stats, True] * 3


@pytest.mark.parametrize("bn_statistics,running_mean", [
    ("target", 0.1 * 10.0),                    # only the target batch (mean 10) moves the average
    ("both", 0.9 * (0.1 * 2.0) + 0.1 * 10.0),  # source (mean 2) then target
])
def test_forward_by_domain_normalises_each_domain_alone(bn_statistics, running_mean):
    from dakd_core.train.uda_common import forward_by_domain

    bn = torch.nn.BatchNorm2d(1, momentum=0.1)
    source = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)   # mean 2, biased var 1
    target = torch.tensor([8.0, 12.0]).view(2, 1, 1, 1)  # mean 10, biased var 4
    out_s, out_t = forward_by_domain(bn, [source, target], [False, True], bn_statistics)
    # each batch normalised by its own statistics: one concatenated batch (mean 6) would not give these
    torch.testing.assert_close(out_s.flatten(), torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_t.flatten(), torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    assert bn.running_mean.item() == pytest.approx(running_mean)
