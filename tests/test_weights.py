"""Pretrained backbones (`backbone_weights`): a timm state dict served by moto's S3 server is loaded
tensor for tensor; a file that does not fit, a missing object and an offline hub tag are
ConfigErrors naming the field; a hub tag is kept in the store after its one download."""

from __future__ import annotations

import io
import json

import pytest
import torch

import dakd_core.compat  # noqa: F401  (before timm: torchvision ops on CPU)
import timm

from dakd_core.config import build_config
from dakd_core.errors import ConfigError
from dakd_core.models import create_model
from dakd_core.models import weights as W
from dakd_core.models.deeplabv2 import VARIANTS
from dakd_core.storage import open_store
from dakd_core.train.configs import PretrainConfig


def _timm_state(seed: int, **changes) -> dict[str, torch.Tensor]:
    """The full timm classifier of deeplabv2_tiny's backbone architecture, as a hub checkpoint is."""
    arch, kwargs, _ = VARIANTS["deeplabv2_tiny"]
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, **{**kwargs, **changes}).state_dict()


def _put(store_uri: str, key: str, state) -> str:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return open_store(store_uri).put_bytes(key, buffer.getvalue())


def test_s3_weights_load_into_the_backbone(s3_store):
    state = _timm_state(seed=7)
    uri = _put(s3_store, "weights/tiny.pth", state)
    model = create_model("deeplabv2_tiny", backbone_weights=uri)
    own = model.backbone.state_dict()
    assert set(own) < set(state) and "fc.weight" in set(state) - set(own)  # classifier dropped
    for key, value in own.items():
        assert torch.equal(value, state[key]), key
    random_init = create_model("deeplabv2_tiny").backbone.state_dict()
    assert not torch.equal(random_init["conv1.0.weight"], own["conv1.0.weight"])
    # the stage config takes the URI as it is
    cfg = build_config(PretrainConfig, model="deeplabv2_tiny", backbone_weights=uri, source_manifest="m", out="o")
    assert cfg.backbone_weights == uri


def test_weights_that_do_not_fit_are_config_errors(s3_store):
    wrong = _put(s3_store, "weights/r18.pth", _timm_state(seed=0, channels=(16, 32, 64, 96)))  # same keys
    with pytest.raises(ConfigError, match=f"backbone_weights: {wrong} has .* tensors of the wrong shape"):
        create_model("deeplabv2_tiny", backbone_weights=wrong)
    partial = _put(s3_store, "weights/partial.pth",
                   {k: v for k, v in _timm_state(seed=0).items() if not k.startswith("layer4")})
    with pytest.raises(ConfigError, match=f"backbone_weights: {partial} does not match backbone 'resnet18': "
                                          "[0-9]+ missing keys \\['layer4"):
        create_model("deeplabv2_tiny", backbone_weights=partial)
    with pytest.raises(ConfigError, match=f"backbone_weights: object not found: {s3_store}/weights/none.pth"):
        create_model("deeplabv2_tiny", backbone_weights=f"{s3_store}/weights/none.pth")
    junk = open_store(s3_store).put_bytes("weights/junk.pth", b"not torch")
    with pytest.raises(ConfigError, match=f"backbone_weights: {junk} is not a loadable state dict"):
        create_model("deeplabv2_tiny", backbone_weights=junk)


def test_hub_tag_offline_and_unknown_are_config_errors(s3_store):
    # conftest sets HF_HUB_OFFLINE=1: the download fails at once, naming the field and the way out
    with pytest.raises(ConfigError, match="backbone_weights: cannot download 'timm:resnet18.a1_in1k' from the "
                                          "Hugging Face hub .*weights/timm/resnet18.a1_in1k.pth"):
        create_model("deeplabv2_resnet18", backbone_weights="timm:resnet18.a1_in1k")
    with pytest.raises(ConfigError, match="backbone_weights: cannot download"):
        W.weights_in_store("timm:resnet18.a1_in1k", s3_store)
    assert open_store(s3_store).list() == []  # nothing half-written
    for bad in ("timm:resnet18", "timm:resnet18.nosuch_in1k", "timm:nonet.a1_in1k"):
        with pytest.raises(ConfigError, match=f"backbone_weights: '{bad}' is not a timm pretrained tag"):
            W.weights_in_store(bad, s3_store)


def test_hub_tag_is_downloaded_once_then_read_from_the_store(s3_store, monkeypatch):
    state = _timm_state(seed=3)
    downloads = []
    monkeypatch.setattr(W, "download_hub_state_dict", lambda tag: downloads.append(tag) or state)
    uri = W.weights_in_store("timm:resnet18.a1_in1k", s3_store)
    assert uri == f"{s3_store}/weights/timm/resnet18.a1_in1k.pth" and downloads == ["resnet18.a1_in1k"]
    assert W.weights_in_store("timm:resnet18.a1_in1k", s3_store) == uri and len(downloads) == 1
    assert W.weights_in_store(uri, s3_store) == uri  # a URI passes through
    # The store copy is what training reads (the real resnet18 has other widths than the tiny net:
    # load it into a backbone of the tag's architecture).
    backbone = timm.create_model("resnet18", features_only=True, out_indices=(3, 4), output_stride=8,
                                 **VARIANTS["deeplabv2_tiny"][1])
    from dakd_core.models.base import load_backbone_weights

    load_backbone_weights(backbone, "resnet18", uri, **VARIANTS["deeplabv2_tiny"][1])
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_pretrain_task_keeps_a_hub_tag_in_the_store_and_trains_from_it(tmp_path, monkeypatch):
    """The pipeline's pretrain task turns `timm:TAG` into the store copy; the checkpoint's config
    names that URI and the network started from its tensors."""
    from _train_data import make_split
    from dakd_core.models.checkpoint import load_checkpoint
    from dakd_core.orchestration import pins
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    state = _timm_state(seed=5)
    monkeypatch.setattr(W, "download_hub_state_dict", lambda tag: state)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    store = (tmp_path / "store").as_uri()
    (tmp_path / "store").mkdir()
    source = make_split(store, "src", 2, "source", seed=0)
    # the settings `start` plans from the pipeline parameters (student_weights -> backbone_weights)
    plan = build_plan(PipelineParams(student_model="deeplabv2_tiny", student_weights="timm:resnet18.a1_in1k",
                                     train_source_resize_h=32, train_source_resize_w=64, train_crop_h=32, train_crop_w=64,
                                     student_batch_size=1, pretrain_iterations=1, train_lr=1e-9, train_eval_every=1,
                                     train_num_workers=0, train_seed=0))
    out = pretrain_task(store_uri=store, experiment="dakd-test", role="student",
                        config=json.dumps(plan["pretrain_student"]), source_manifest=source)
    checkpoint = load_checkpoint(pins.resolve(out["checkpoint"]))
    assert checkpoint["config"]["backbone_weights"] == f"{store}/weights/timm/resnet18.a1_in1k.pth"
    # one step at lr 1e-9 leaves the loaded weights (not a random init) in place
    trained = {k[len("backbone."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
    torch.testing.assert_close(trained["conv1.0.weight"], state["conv1.0.weight"])
