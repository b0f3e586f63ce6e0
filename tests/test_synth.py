"""The built-in procedural domain pair: determinism, real dataset layouts, classes, domain shift."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from dakd_core.cli import main
from dakd_core.data import formats, synth
from dakd_core.data.synth import generate, render_sample
from dakd_core.errors import ConfigError
from dakd_core.labels import NUM_CLASSES, to_train_ids

SIZE = (64, 32)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _batch(domain, n, size=(128, 64), condition=None, split="train", seed=0, **look):
    return [render_sample(domain, size, seed, split, i, condition, **look) for i in range(n)]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate(tmp_path / "a", "target", 3, size=SIZE, seed=7, split="val", progress=False)
    generate(tmp_path / "b", "target", 3, size=SIZE, seed=7, split="val", progress=False)
    generate(tmp_path / "c", "target", 3, size=SIZE, seed=8, split="val", progress=False)
    ta, tb, tc = (_tree_bytes(tmp_path / d) for d in "abc")
    assert a.num_images == 3 and len(ta) == 3 * 2 + 1  # images, labels, synth_info.json
    assert ta == tb
    assert ta.keys() == tc.keys()
    images = [k for k in ta if "leftImg8bit" in k]
    assert all(ta[k] != tc[k] for k in images)


def test_workers_do_not_change_the_output(tmp_path):
    generate(tmp_path / "one", "source", 4, size=SIZE, seed=3, progress=False)
    generate(tmp_path / "two", "source", 4, size=SIZE, seed=3, workers=2, progress=False)
    assert _tree_bytes(tmp_path / "one") == _tree_bytes(tmp_path / "two")


def test_splits_and_domains_never_share_scenes():
    train, val = render_sample("target", SIZE, 0, "train", 0), render_sample("target", SIZE, 0, "val", 0)
    source = render_sample("source", SIZE, 0, "train", 0)
    assert not np.array_equal(train[1], val[1])
    assert not np.array_equal(train[1], source[1])


def test_layouts_are_what_the_dataset_readers_expect(tmp_path):
    src, tgt, wx = tmp_path / "gta", tmp_path / "cs", tmp_path / "acdc"
    generate(src, "source", 3, size=SIZE, progress=False)
    for split in ("train", "val", "tune"):
        generate(tgt, "target", 2, size=SIZE, split=split, progress=False)
    generate(wx, "target", 2, size=SIZE, split="val", weather=True, progress=False)

    assert (src / "images" / "00001.png").is_file() and (src / "labels" / "00003.png").is_file()
    assert (tgt / "leftImg8bit/tune/dakdorf/dakdorf_000001_000019_leftImg8bit.png").is_file()
    assert (tgt / "gtFine/tune/dakdorf/dakdorf_000001_000019_gtFine_labelIds.png").is_file()
    assert (wx / "rgb_anon/night/val/GOPR2000/GOPR2000_frame_000001_rgb_anon.png").is_file()
    assert (wx / "gt/snow/val/GOPR4000/GOPR4000_frame_000000_gt_labelIds.png").is_file()

    gta = formats.discover("gta5", src, "train", require_labels=True)
    assert [s.sample_id for s in gta] == ["00001", "00002", "00003"]
    for split in ("train", "val", "tune"):
        assert len(formats.discover("cityscapes", tgt, split, require_labels=True)) == 2
    acdc = formats.discover("acdc", wx, "val", require_labels=True)
    assert sorted({s.condition for s in acdc}) == ["fog", "night", "rain", "snow"]
    assert len(acdc) == 8
    for fmt, samples in (("gta5", gta), ("acdc", acdc)):
        for s in samples:
            train_ids = formats.read_label(s.label_path, fmt)  # unknown ids would raise
            assert train_ids.shape == (SIZE[1], SIZE[0])
            assert (train_ids < NUM_CLASSES).mean() > 0.6


def test_gta5_labels_are_palette_pngs_of_cityscapes_label_ids(tmp_path):
    generate(tmp_path, "source", 1, size=SIZE, seed=5, progress=False)
    img = Image.open(tmp_path / "labels" / "00001.png")
    assert img.mode == "P"
    _, expected = render_sample("source", SIZE, 5, "train", 0)
    assert np.array_equal(np.asarray(img), expected)
    palette = np.asarray(img.getpalette()[: 3 * 34]).reshape(-1, 3)
    assert tuple(palette[7]) == id2label[7].color  # road is drawn in the Cityscapes road colour


def test_every_class_appears_and_label_ids_are_cityscapes_ids():
    allowed = {i for i, lab in id2label.items() if lab.trainId not in (255, -1)} | {1}  # + ego vehicle
    for domain in ("source", "target"):
        seen = set()
        for _, label in _batch(domain, 8):
            assert set(np.unique(label).tolist()) <= allowed
            seen |= set(np.unique(to_train_ids(label, "cityscapes")).tolist())
        assert set(range(NUM_CLASSES)) <= seen, f"{domain}: missing train ids {set(range(NUM_CLASSES)) - seen}"


def _rows_of(label_batch, label_id):
    """Mean normalised row of the pixels of one labelId over a batch."""
    rows = [np.nonzero(lab == label_id)[0] / lab.shape[0] for lab in label_batch]
    return np.concatenate(rows)


def test_layout_is_plausible_and_the_camera_layout_differs_from_the_source():
    labels = {d: [lab for _, lab in _batch(d, 8, target_layout="camera")] for d in ("source", "target")}
    for d, batch in labels.items():
        road, sky = _rows_of(batch, 7), _rows_of(batch, 23)
        assert (road > 0.5).mean() > 0.9, d
        assert (sky < 0.5).mean() > 0.95, d
    # the target camera sits higher with a lower horizon: sky reaches further down, plus a hood
    assert _rows_of(labels["target"], 23).mean() > _rows_of(labels["source"], 23).mean()
    assert all((lab[-1] == 1).any() for lab in labels["target"])
    assert not any((lab == 1).any() for lab in labels["source"])


def _class_shares(domain, n, **look):
    hist = np.zeros(NUM_CLASSES)
    for _, lab in _batch(domain, n, size=(64, 32), **look):
        ids = to_train_ids(lab, "cityscapes").ravel()
        hist += np.bincount(ids[ids < NUM_CLASSES], minlength=NUM_CLASSES)
    return hist / hist.sum()


def test_default_target_layout_draws_class_frequencies_from_the_source_distribution():
    source, matched = _class_shares("source", 60), _class_shares("target", 60)
    camera = _class_shares("target", 60, target_layout="camera")
    road = 0
    # measured over 100 scenes: road 51 % of source pixels, 51 % of matched target, 19 % camera layout
    assert abs(matched[road] - source[road]) < 0.05 and camera[road] < source[road] - 0.2
    assert np.abs(matched - source).sum() < 0.5 * np.abs(camera - source).sum()


def test_shift_moves_the_target_look_continuously_from_the_source_look():
    """At shift 0 the target is painted with the source's palette and no camera effects; the colour
    distance to the source look grows with the shift; labels never change with it."""
    def look(shift):
        return render_sample("target", (128, 64), 0, "train", 3, shift=shift)

    def source_look_distance(img, lab):
        # per-class mean colour of this image vs the same class in source images
        src = _batch("source", 12)
        dists = []
        for cls in (7, 11, 23):  # road, building, sky
            ref = np.concatenate([i[l == cls] for i, l in src]).mean(0)
            if (lab == cls).any():
                dists.append(np.abs(img[lab == cls].mean(0) - ref).max())
        return float(np.mean(dists))

    images = {s: look(s) for s in (0.0, 0.3, 0.6, 1.0)}
    assert all(np.array_equal(images[0.0][1], lab) for _, lab in images.values())
    d = [source_look_distance(*images[s]) for s in (0.0, 0.3, 0.6, 1.0)]
    assert d[0] < d[1] < d[2] < d[3], d
    # shift 0: flat shading as in the source (equal neighbouring road pixels); shift 1: none
    assert _flat_fraction(*images[0.0]) > 0.9 and _flat_fraction(*images[1.0]) < 0.1


def test_shift_and_target_layout_are_recorded_and_checked(tmp_path):
    result = generate(tmp_path, "target", 1, size=SIZE, seed=1, split="val", shift=0.25, target_layout="camera",
                      progress=False)
    info = json.loads(Path(result.info_path).read_text())["parts"]["cityscapes/val"]
    assert info["shift"] == 0.25 and info["target_layout"] == "camera"
    with pytest.raises(ConfigError, match="'shift'"):
        generate(tmp_path / "bad", "target", 1, size=SIZE, shift=1.5, progress=False)
    with pytest.raises(ConfigError, match="'target_layout'"):
        generate(tmp_path / "bad", "target", 1, size=SIZE, target_layout="fisheye", progress=False)
    assert not (tmp_path / "bad").exists()


def _saturation(img):
    return float(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1].mean())


def _flat_fraction(img, label, label_id=7):
    """Share of horizontally neighbouring pixels of one class with exactly equal colour."""
    same = np.abs(np.diff(img.astype(int), axis=1)).sum(-1) == 0
    return float(same[label[:, 1:] == label_id].mean())


def test_source_and_target_images_differ_statistically():
    src, tgt = _batch("source", 6), _batch("target", 6, shift=1.0)
    # game: flat shading, so road pixels repeat exactly; camera: texture and sensor noise
    assert min(_flat_fraction(*s) for s in src) > 0.9
    assert max(_flat_fraction(*t) for t in tgt) < 0.1
    # game palette is saturated, the camera's muted
    assert np.mean([_saturation(i) for i, _ in src]) > 1.15 * np.mean([_saturation(i) for i, _ in tgt])
    mean_src = np.mean([i.reshape(-1, 3).mean(0) for i, _ in src], 0)
    mean_tgt = np.mean([i.reshape(-1, 3).mean(0) for i, _ in tgt], 0)
    assert np.abs(mean_src - mean_tgt).max() > 8


def test_weather_conditions_change_the_look_not_the_labels():
    clear = np.mean([img.mean() for img, _ in _batch("target", 4)])
    night = np.mean([img.mean() for img, _ in _batch("target", 4, condition="night")])
    fog = [img for img, _ in _batch("target", 4, condition="fog")]
    assert night < 0.6 * clear
    assert np.mean([img.std() for img in fog]) < np.mean([img.std() for img, _ in _batch("target", 4)])
    for cond in synth.CONDITIONS:  # labels stay complete driving scenes under every condition
        labels = [lab for _, lab in _batch("target", 3, condition=cond)]
        assert all((lab == 7).any() and (lab == 23).any() for lab in labels)


@pytest.mark.parametrize("kwargs, field", [
    ({"n": 0}, "'n'"), ({"domain": "synthetic"}, "'domain'"), ({"size": (8, 400)}, "'size'"),
    ({"split": "a/b"}, "'split'"), ({"weather": True, "domain": "source"}, "'weather'"),
    ({"workers": 0}, "'workers'"),
])
def test_bad_config_names_the_field_and_writes_nothing(tmp_path, kwargs, field):
    args = {"domain": "target", "n": 2, "size": SIZE, **kwargs}
    with pytest.raises(ConfigError, match=field):
        generate(tmp_path / "out", progress=False, **args)
    assert not (tmp_path / "out").exists()


def test_size_parsing():
    assert synth.parse_size("256x128") == (256, 128)
    for bad in ("256", "256x", "x128", "256*128", "-1x5"):
        with pytest.raises(ConfigError, match="'size'"):
            synth.parse_size(bad)


def test_failed_run_leaves_its_part_unpublished(tmp_path, monkeypatch):
    generate(tmp_path, "target", 2, size=SIZE, split="train", progress=False)
    generate(tmp_path, "target", 2, size=SIZE, split="val", progress=False)
    calls = {"n": 0}
    real_png = synth._png

    def failing_png(array):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_png(array)

    monkeypatch.setattr(synth, "_png", failing_png)
    with pytest.raises(OSError):
        generate(tmp_path, "target", 3, size=SIZE, split="train", seed=1, progress=False)
    info = json.loads((tmp_path / synth.INFO_FILE).read_text())
    assert list(info["parts"]) == ["cityscapes/val"]  # train is no longer marked complete
    assert not list(tmp_path.rglob("*.tmp"))


def test_same_settings_are_not_regenerated_and_info_records_parameters(tmp_path):
    generate(tmp_path, "source", 2, size=SIZE, seed=4, progress=False)
    label = tmp_path / "labels" / "00001.png"
    before = label.stat().st_mtime_ns
    result = generate(tmp_path, "source", 2, size=SIZE, seed=4, progress=False)
    assert label.stat().st_mtime_ns == before
    info = json.loads(Path(result.info_path).read_text())["parts"]["gta5/train"]
    assert info["n"] == 2 and info["size"] == list(SIZE) and info["seed"] == 4
    assert sum(info["label_pixels"].values()) == 2 * SIZE[0] * SIZE[1]
    assert (tmp_path / "gta5_list" / "train.txt").read_text().split() == ["00001.png", "00002.png"]
    with pytest.raises(ConfigError, match="one split per directory"):
        generate(tmp_path, "source", 2, size=SIZE, split="val", progress=False)


def test_cli_writes_a_dataset_and_reports_bad_input(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "w"), "--domain", "target", "--n", "1", "--size", "64x32",
                 "--weather", "--conditions", "fog,snow", "--split", "val"]) == 0
    assert sorted(p.name for p in (tmp_path / "w" / "rgb_anon").iterdir()) == ["fog", "snow"]
    assert main(["synth", "--out", str(tmp_path / "s"), "--domain", "target", "--n", "1", "--size", "64x32",
                 "--shift", "0.2", "--target-layout", "camera"]) == 0
    part = json.loads((tmp_path / "s" / synth.INFO_FILE).read_text())["parts"]["cityscapes/train"]
    assert (part["shift"], part["target_layout"]) == (0.2, "camera")
    assert main(["synth", "--out", str(tmp_path / "x"), "--domain", "target", "--n", "1", "--size", "64by32"]) == 2
    assert "field 'size'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_preview_grid_is_written(tmp_path):
    out = synth.preview(tmp_path / "grid.png", size=(64, 32), columns=2)
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] > grid.shape[1]  # 12 rows of samples, 2 columns
