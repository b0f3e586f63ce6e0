"""Networks, discriminator, torchvision compat shim and checkpoints (tiny inputs, CPU)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from dakd_core.errors import ConfigError, DataError, TrainingError
from dakd_core.models import (
    count_parameters,
    Discriminator,
    SegOutput,
    create_model,
    discriminator_input,
    list_models,
)
from dakd_core.models.deeplabv2 import ASPP_DILATIONS, ASPPClassifier

torch.set_num_threads(1)

SMALL = ["deeplabv2_tiny", "deeplabv2_thin", "deeplabv2_resnet18", "deeplabv2_mobilenetv3",
         "swiftnet_resnet18", "swiftnet_mobilenetv4", "swiftnet_thin", "swiftnet_tiny"]
BIG = ["deeplabv2_resnet101", "deeplabv2_resnet50", "deeplabv2_resnet34"]


def test_compat_makes_timm_usable():
    import dakd_core.compat as compat
    import timm

    assert compat.STATE in {"present", "extension", "schemas"}
    # the operator torchvision needed at import time now exists
    assert torch._C._dispatch_find_schema_or_throw("torchvision::nms", "") is not None
    net = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert compat.ensure_torchvision_ops() == compat.STATE  # idempotent


def test_registry_lists_every_network_and_rejects_unknown_names():
    assert set(SMALL + BIG) == set(list_models())
    with pytest.raises(ConfigError) as err:
        create_model("deeplabv2_resnet1000")
    assert "deeplabv2_resnet1000" in str(err.value) and "deeplabv2_tiny" in str(err.value)


def _expected(size, stride):
    return math.ceil(size / stride)


@pytest.mark.parametrize("name", SMALL)
def test_small_networks_output_shapes_on_odd_sizes(name):
    model = create_model(name, num_classes=5)
    assert model.name == name and model.num_classes == 5
    x = torch.randn(2, 3, 65, 97)
    out = model(x)
    assert isinstance(out, SegOutput)
    for head in ("main", "aux"):
        stride = model.output_strides[head]
        assert getattr(out, head).shape == (2, 5, _expected(65, stride), _expected(97, stride)), head
    (out.main.mean() + out.aux.mean()).backward()  # both heads are in the graph
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", BIG)
def test_big_networks_output_stride_8(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.main.shape == out.aux.shape == (1, 19, 8, 8)


def test_cpu_scale_pair_decodes_to_stride_2_and_the_teacher_is_4x_the_student():
    teacher, student = create_model("swiftnet_thin"), create_model("swiftnet_tiny")
    for model in (teacher, student):
        assert model.output_strides == {"main": 2, "aux": 8}
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, 64, 128))
        assert out.main.shape == (1, 19, 32, 64) and out.aux.shape == (1, 19, 8, 16)
    ratio = count_parameters(teacher) / count_parameters(student)
    assert 4.0 <= ratio < 5.0, ratio


@pytest.mark.parametrize("name", ["deeplabv2_tiny", "swiftnet_mobilenetv4", "swiftnet_tiny"])
def test_forward_features_do_not_change_forward(name):
    model = create_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        split = model.forward_head(feats)
        plain = model(x)
    assert set(feats) == set(model.feature_channels)
    for key, fmap in feats.items():
        assert fmap.shape[1] == model.feature_channels[key], key
    assert {"mid", "last"} <= set(feats)
    torch.testing.assert_close(split.main, plain.main)
    torch.testing.assert_close(split.aux, plain.aux)


def test_aspp_sums_all_four_dilated_branches():
    torch.manual_seed(0)
    head = ASPPClassifier(8, 3)
    assert [b.dilation[0] for b in head.branches] == list(ASPP_DILATIONS) == [6, 12, 18, 24]
    for b in head.branches:  # non-trivial weights so every branch gives a distinct output
        torch.nn.init.normal_(b.weight, 0, 0.5)
        torch.nn.init.normal_(b.bias, 0, 0.5)
    x = torch.randn(1, 8, 30, 30)
    with torch.no_grad():
        full = head(x)
        torch.testing.assert_close(full, sum(b(x) for b in head.branches))
        for i, branch in enumerate(head.branches):
            saved = branch.weight.clone(), branch.bias.clone()
            branch.weight.zero_()
            branch.bias.zero_()
            without = head(x)
            branch.weight.copy_(saved[0])
            branch.bias.copy_(saved[1])
            # removing branch i removes exactly its contribution
            torch.testing.assert_close(full - without, branch(x))
            assert (full - without).abs().max() > 1e-3, f"branch {i} contributes nothing"


def test_param_groups_put_heads_at_ten_times_the_backbone_lr():
    model = create_model("deeplabv2_tiny")
    groups = model.param_groups(0.01)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == pytest.approx(0.01) and groups[1]["lr"] == pytest.approx(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    head_ids = {id(p) for p in list(model.main_head.parameters()) + list(model.aux_head.parameters())}
    assert {id(p) for p in groups[1]["params"]} == head_ids
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # accepted by a real optimizer


def test_backbone_weights_load_strictly(tmp_path):
    donor = create_model("deeplabv2_tiny")
    state = donor.backbone.state_dict()
    good = tmp_path / "backbone.pt"
    # a timm classification checkpoint also carries its classifier: that is accepted
    torch.save({**state, "fc.weight": torch.zeros(1000, 128), "fc.bias": torch.zeros(1000)}, good)
    model = create_model("deeplabv2_tiny", backbone_weights=str(good))
    for key, value in state.items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)

    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(ConfigError, match="partial.pt.*missing keys"):
        create_model("deeplabv2_tiny", backbone_weights=str(partial))
    with pytest.raises(ConfigError, match="not found"):
        create_model("deeplabv2_tiny", backbone_weights=str(tmp_path / "absent.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="junk.pt"):
        create_model("deeplabv2_tiny", backbone_weights=str(junk))


def test_discriminator_layers_and_output_shape():
    disc = Discriminator(19)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(19, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    slopes = {m.negative_slope for m in disc.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.2}
    assert disc(torch.randn(2, 19, 32, 64)).shape == (2, 1, 1, 2)
    assert disc(torch.randn(1, 19, 64, 128)).shape == (1, 1, 2, 4)
    with pytest.raises(TrainingError, match="smaller than 32"):
        disc(torch.randn(1, 19, 8, 16))


def test_discriminator_inputs_softmax_and_entropy():
    logits = torch.tensor([[[[0.0]], [[0.0]], [[-1e4]]]])  # p = (0.5, 0.5, 0): log 0 must not NaN
    soft = discriminator_input(logits, "softmax")
    torch.testing.assert_close(soft[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.0]))
    ent = discriminator_input(logits, "entropy")
    expected = torch.tensor([0.5 * math.log(2), 0.5 * math.log(2), 0.0]) / math.log(3)
    torch.testing.assert_close(ent[0, :, 0, 0], expected)
    assert torch.isfinite(ent).all()
    resized = discriminator_input(torch.randn(2, 19, 4, 8), "softmax", size=(32, 64))
    assert resized.shape == (2, 19, 32, 64)
    torch.testing.assert_close(resized.sum(1), torch.ones(2, 32, 64))
    with pytest.raises(ConfigError, match="kind"):
        discriminator_input(logits, "logits")


# --- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_hash(tmp_path):
    from dakd_core.models.checkpoint import load_model, make_payload, save_checkpoint, sha256_of_checkpoint

    model = create_model("deeplabv2_tiny", num_classes=4).eval()
    uri = (tmp_path / "ckpt" / "best.pt").as_uri()
    payload = make_payload(model, step=7, config={"lr": 0.01, "crop": [32, 64]}, best_miou=0.25)
    assert save_checkpoint(uri, payload) == uri
    restored, meta = load_model(uri)
    assert restored.name == "deeplabv2_tiny" and restored.num_classes == 4
    assert meta["step"] == 7 and meta["config"]["crop"] == [32, 64] and meta["best_miou"] == 0.25
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x).main, model(x).main)
    assert sha256_of_checkpoint(uri) == hashlib.sha256((tmp_path / "ckpt" / "best.pt").read_bytes()).hexdigest()


def test_checkpoint_of_another_network_is_refused(tmp_path):
    from dakd_core.models.checkpoint import load_model, load_state_into, make_payload, save_checkpoint

    uri = str(tmp_path / "tiny.pt")
    save_checkpoint(uri, make_payload(create_model("deeplabv2_tiny")))
    with pytest.raises(TrainingError, match="deeplabv2_tiny.*deeplabv2_thin"):
        load_model(uri, expected_model="deeplabv2_thin")
    payload = torch.load(uri, weights_only=True)
    with pytest.raises(TrainingError, match="deeplabv2_tiny.*deeplabv2_thin"):
        load_state_into(create_model("deeplabv2_thin"), payload, uri)
    # a payload whose weights do not fit the network it names
    payload["model_name"] = "deeplabv2_thin"
    bad = str(tmp_path / "mislabelled.pt")
    save_checkpoint(bad, payload)
    with pytest.raises(DataError, match="mislabelled.pt.*deeplabv2_thin"):
        load_model(bad)


def test_corrupt_or_foreign_checkpoints_are_data_errors(tmp_path):
    from dakd_core.models.checkpoint import load_checkpoint, make_payload, save_checkpoint

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="junk.pt"):
        load_checkpoint(str(junk))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(DataError, match="foreign.pt.*not a dakd checkpoint"):
        load_checkpoint(str(foreign))
    # truncated copy of a real checkpoint
    real = tmp_path / "real.pt"
    save_checkpoint(str(real), make_payload(create_model("deeplabv2_tiny")))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(real.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated.pt"):
        load_checkpoint(str(truncated))


def test_non_plain_payload_is_refused_before_writing(tmp_path):
    from dakd_core.models.checkpoint import make_payload, save_checkpoint

    payload = make_payload(create_model("deeplabv2_tiny"), config={"path": tmp_path})  # a PosixPath
    target = tmp_path / "never.pt"
    with pytest.raises(TrainingError, match="config.path"):
        save_checkpoint(str(target), payload)
    assert not target.exists()


def test_model_table_reports_measured_parameter_counts():
    from dakd_core.models import count_parameters
    from dakd_core.models.__main__ import table

    text = table(["deeplabv2_tiny", "swiftnet_mobilenetv4"], 1, 1, (32, 64), "cpu")
    lines = text.splitlines()
    assert len(lines) == 4 and "step s" in lines[0]
    tiny = create_model("deeplabv2_tiny")
    assert f"| {count_parameters(tiny) / 1e6:.2f}M |" in lines[2] and "| 8/8 |" in lines[2]
    assert "| 4/8 |" in lines[3]
    assert float(lines[2].rstrip(" |").split("|")[-1]) > 0
