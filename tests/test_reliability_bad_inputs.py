"""Bad-input corpus: every case runs through the real CLI (`dakd_core.cli.main`), must exit 2 with
a message naming the file, URI or config field, and must leave no published output.

The table in docs/reliability.md is generated from CASES and the messages seen in a run:

    DAKD_WRITE_RELIABILITY_DOC=1 .venv/bin/python -m pytest tests/test_reliability_bad_inputs.py -q

(with -k, only the selected cases' messages are rewritten; the others keep theirs) and
test_doc_table_lists_every_case fails when the doc and CASES drift apart.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import fixtures_datasets as F
from _distill_data import H, W, make_checkpoint, make_split
from dakd_core.cache import INDEX_SCHEMA, CacheConfig, run_cache
from dakd_core.cli import main
from dakd_core.data.imageio import encode_png
from dakd_core.data.manifest import MANIFEST_SCHEMA, read_manifest, to_table
from dakd_core.storage import open_store, read_bytes, uri_exists

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    input: str  # what is wrong, in words (the doc's "input" column)
    expect: str  # regex the error message must match: it names the file, URI or field
    setup: Callable  # (world, tmp) -> (argv, [URIs or paths that must not exist afterwards])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Valid inputs every case starts from and then breaks one thing of."""
    store = tmp_path_factory.mktemp("badstore").as_uri()
    src = make_split(store, "src", "source", 2, seed=1)
    tgt = make_split(store, "tgt", "target", 2, seed=2, labelled=False)
    teacher = make_checkpoint(f"{store}/teacher.pt", seed=0)
    student = make_checkpoint(f"{store}/student.pt", seed=1)
    index = run_cache(CacheConfig(teacher=teacher, manifests=[src, tgt], store=store, name="c",
                                  size=(H, W), device="cpu")).index_uri
    return {"store": store, "src": src, "tgt": tgt, "teacher": teacher, "student": student, "index": index}


# ------------------------------------------------------------------------------------- builders


def _ingest(damage: Callable[[Path, Path, Path], None], extra=()):
    """A 2-image Cityscapes tree with one thing broken by `damage(root, image, label)`."""

    def setup(w, tmp):
        root = tmp / "cs"
        F.write_cityscapes(root, split="train", cities=("ulm",), per_city=2)
        image = root / "leftImg8bit/train/ulm/ulm_000001_000020_leftImg8bit.png"
        label = root / "gtFine/train/ulm/ulm_000001_000020_gtFine_labelIds.png"
        damage(root, image, label)
        store = (tmp / "out").as_uri()
        argv = ["ingest", "--format", "cityscapes", "--root", str(root), "--split", "train", "--domain", "source",
                "--store", store, "--name", "ds", *extra]
        return argv, [f"{store}/datasets/ds/train/manifest.parquet"]

    return setup


def _train_flags(stage: str, w: dict, out: str, **override) -> list[str]:
    fields = dict(model="deeplabv2_tiny", source_manifest=w["src"], out=out, crop=(H, W), source_resize=(H, W),
                  batch_size=2, num_workers=0, iterations=2, checkpoint_every=1, lr=0.01, device="cpu")
    if stage in ("adapt", "distill"):
        fields.update(target_manifest=w["tgt"], init=w["student"], target_resize=(H, W))
    if stage == "distill":
        fields.update(teacher=w["teacher"], teacher_cache=w["index"])
    fields.update(override)
    argv = [stage]
    for name, value in fields.items():
        if value is None:
            continue
        argv.append("--" + name.replace("_", "-"))
        argv += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
    return argv


def _train(stage: str, prepare: Callable[[dict, Path], dict] = lambda w, tmp: {}):
    """A tiny training run with the fields `prepare` returns overriding valid ones."""

    def setup(w, tmp):
        out = (tmp / "run").as_uri()
        override = prepare(w, tmp)
        config = override.pop("_config", None)
        argv = _train_flags(stage, w, out, **override)
        if config is not None:
            argv += ["--config", config]
        return argv, [f"{out}/result.json", f"{out}/best.pt"]

    return setup


def _manifest(w, tmp, rows_from="src", mutate=lambda rows, store: rows) -> str:
    """A copy of a valid manifest with its objects (a manifest may only name objects of its own
    store), its rows changed by `mutate`. Written as plain Parquet, not through write_manifest
    (which refuses some of these rows): a manifest a reader gets need not come from dakd."""
    store = open_store((tmp / "m").as_uri())
    rows = []
    for row in map(dict, read_manifest(w[rows_from])):
        for kind in ("image", "label"):
            if row[f"{kind}_uri"]:
                row[f"{kind}_uri"] = store.put_bytes(f"{kind}/{row['sample_id']}.png", read_bytes(row[f"{kind}_uri"]))
        rows.append(row)
    sink = io.BytesIO()
    pq.write_table(to_table(mutate(rows, store)), sink)
    return store.put_bytes("manifest.parquet", sink.getvalue())


def _empty_manifest(w, tmp) -> dict:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([], schema=MANIFEST_SCHEMA), sink)
    return {"source_manifest": open_store((tmp / "m").as_uri()).put_bytes("manifest.parquet", sink.getvalue())}


def _object(name: str, data: bytes) -> Callable:
    """Write `data` as a stored object; the builder returns its URI."""
    return lambda tmp: open_store((tmp / "o").as_uri()).put_bytes(name, data)


class _Exploit:
    """A pickle whose loading would run code (create a file): weights_only=True must refuse it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_checkpoint(tmp) -> str:
    buffer = io.BytesIO()
    torch.save({"format": "dakd-checkpoint/1", "payload": _Exploit(str(tmp / "PWNED"))}, buffer)
    return open_store((tmp / "o").as_uri()).put_bytes("evil.pt", buffer.getvalue())


def _other_network(tmp) -> str:
    return make_checkpoint((tmp / "thin.pt").as_uri(), seed=0, model="deeplabv2_thin")


def _wrong_classes(tmp) -> str:
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload, save_checkpoint

    net = create_model("deeplabv2_tiny", num_classes=7)
    return save_checkpoint((tmp / "c7.pt").as_uri(), make_payload(net))


def _yaml(tmp, text: str) -> str:
    path = tmp / "config.yaml"
    path.write_text(text)
    return str(path)


def _onnx_case(data: bytes, record_sha: str | None):
    """An .onnx 'artifact' with an export.json beside it recording `record_sha` for it."""

    def setup(w, tmp):
        import hashlib
        import json

        art = open_store((tmp / "export").as_uri())
        uri = art.put_bytes("student_fp32.onnx", data)
        sha = record_sha or hashlib.sha256(data).hexdigest()
        art.put_bytes("export.json", json.dumps({"artifacts": {"onnx_fp32": {
            "file": "student_fp32.onnx", "uri": uri, "sha256": sha}}}).encode())
        out = (tmp / "eval").as_uri()
        argv = ["evaluate", "--model", uri, "--manifest", w["src"], "--out", out, "--device", "cpu", "--no-mlflow"]
        return argv, [f"{out}/metrics.json", f"{out}/report.md"]

    return setup


def _cache(prepare: Callable[[dict, Path], tuple[str, list[str]]]):
    def setup(w, tmp):
        teacher, manifests = prepare(w, tmp)
        store = (tmp / "cache").as_uri()
        argv = ["cache-teacher", "--teacher", teacher, "--store", store, "--name", "x", "--device", "cpu"]
        for m in manifests:
            argv += ["--manifest", m]
        return argv, [f"{store}/teacher_cache/x/index.parquet"]

    return setup


def _replace_first(key: str, data: bytes):
    """A manifest whose first row's `key` object is replaced by `data` (a new object)."""

    def mutate(rows, store):
        rows[0][key] = store.put_bytes("broken.png", data)
        return rows

    return mutate


def _junk(n: int) -> bytes:
    """Deterministic garbage (the documented messages stay the same run to run)."""
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def _ids_with(*unknown: int) -> np.ndarray:
    """Cityscapes label ids (all 7 = road) with `unknown` ids in the first pixels."""
    ids = np.full((32, 64), 7, np.uint8)
    ids[0, : len(unknown)] = unknown
    return ids


def _png16(tmp) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((H, W, 3), 4000, np.uint16))
    return buf.tobytes()


def _jpeg(shape=(32, 64, 3)) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full(shape, 7, np.uint8))
    return buf.tobytes()


def _png_declaring(width: int, height: int) -> bytes:
    """A complete PNG (signature, IHDR, one tiny IDAT, IEND) whose header declares width x height."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _into_directory(path: Path) -> None:
    """Where the file was, a directory of the same name (with a file inside)."""
    path.unlink()
    path.mkdir()
    (path / "inside.png").write_bytes(b"")


def _row(**changes):
    """Mutation of the first manifest row's fields."""
    return lambda rows, store: [{**rows[0], **{k: v(store) if callable(v) else v for k, v in changes.items()}},
                                *rows[1:]]


def _swapped_object(rows, store):
    """The first image, recorded with its stored object's sha256, then replaced by another valid
    PNG of the same size (what a later overwrite of the store would do)."""
    key = rows[0]["image_uri"][len(store.uri) + 1:]
    original = store.get_bytes(key)
    store.put_bytes(key, encode_png(np.full((H, W, 3), 99, np.uint8)))
    return [{**rows[0], "image_object_sha256": hashlib.sha256(original).hexdigest()}, *rows[1:]]


def _void_labels(rows, store):
    """Every label replaced by an all-255 one (no pixel left to score on)."""
    return [{**r, "label_uri": store.put_bytes(f"void/{r['sample_id']}.png", encode_png(np.full((H, W), 255, np.uint8)))}
            for r in rows]


def _copied_cache(w, tmp, damage) -> str:
    """The world's teacher cache copied under tmp (index + shards), then damaged by
    `damage(store, index_rows) -> index_rows`; returns the copy's index URI."""
    source = open_store(w["index"].rsplit("/", 1)[0])
    copy = open_store((tmp / "cache").as_uri())
    for key in source.list():
        copy.put_bytes(key, source.get_bytes(key))
    rows = pq.read_table(io.BytesIO(copy.get_bytes("index.parquet"))).to_pylist()
    table = pa.Table.from_pylist(damage(copy, rows), schema=INDEX_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return copy.put_bytes("index.parquet", sink.getvalue())


def _flip_bit(store, rows):
    key = rows[0]["shard_key"]
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x10
    store.put_bytes(key, bytes(data))
    return rows


def _escaping_shard_key(store, rows):
    return [{**rows[0], "shard_key": "../../../../etc/passwd"}, *rows[1:]]


def _nan_checkpoint(tmp) -> str:
    """A valid checkpoint of the run's network whose bytes hold a NaN weight (written around
    save_checkpoint, which refuses it: a file from an older dakd or another tool)."""
    from dakd_core.models import create_model
    from dakd_core.models.checkpoint import make_payload

    payload = make_payload(create_model("deeplabv2_tiny", num_classes=19))
    name = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][name].view(-1)[0] = float("nan")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return open_store((tmp / "o").as_uri()).put_bytes("nan.pt", buffer.getvalue())


def _score(damage: Callable[[Path], None]):
    """Predictions (all road) for a 2-image Cityscapes val tree; `damage(pred_dir)` breaks one."""

    def setup(w, tmp):
        gt = tmp / "gt"
        ids = F.write_cityscapes(gt, split="val", cities=("ulm",), per_city=2)
        pred = tmp / "pred"
        pred.mkdir()
        for sid in ids:
            F.write_gray(pred / f"{sid}.png", np.zeros((32, 64), np.uint8))
        damage(pred, gt)
        out = tmp / "score"
        argv = ["score", "--pred", str(pred), "--gt", str(gt), "--gt-format", "cityscapes", "--out", str(out)]
        return argv, [str(out / "metrics.json")]

    return setup


def _pred_with(value: int):
    def damage(pred: Path, gt: Path) -> None:
        ids = np.zeros((32, 64), np.uint8)
        ids[5, 5:8] = value
        F.write_gray(pred / "ulm_000000_000019.png", ids)

    return damage


def _export(**flags):
    def setup(w, tmp):
        out = (tmp / "x").as_uri()
        argv = ["export", "--model", w["student"], "--out", out, "--no-mlflow", "--device", "cpu"]
        for name, value in flags.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        return argv, [out + "/export.json", out + "/student_fp32.onnx"]

    return setup


def _evaluate(**flags):
    def setup(w, tmp):
        out = (tmp / "eval").as_uri()
        argv = ["evaluate", "--model", w["student"], "--manifest", w["src"], "--out", out, "--device", "cpu",
                "--no-mlflow"]
        for name, value in flags.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        return argv, [f"{out}/metrics.json", f"{out}/report.md"]

    return setup


def _readonly_tracking_db(w, tmp) -> dict:
    """MLFLOW_TRACKING_URI -> a migrated sqlite database opened read-only (SQLite's own
    read-only mode: file permissions would not stop root; tests/test_reliability_inputs.py
    covers the chmod 0444 file as an unprivileged process)."""
    import shutil

    db = tmp / "ro.db"
    shutil.copyfile(Path(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):]), db)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///file:{db}?mode=ro&uri=true"  # restored by mlflow_uri
    return {}


def _leased(location: str, scope: str = "writer") -> None:
    """The writer lease of `location` held by a live run on another node (expires in an hour)."""
    import json
    import time

    from dakd_core.lease import lease_key

    record = {"owner": "node-7:4242:5eed", "host": "node-7", "pid": 4242, "what": "a run", "released": False,
              "acquired_at": time.time(), "expires_at": time.time() + 3600}
    open_store(location).put_bytes(lease_key(scope), json.dumps(record).encode())


def _leased_train_out(w, tmp) -> dict:
    _leased((tmp / "run").as_uri())
    return {}


# ------------------------------------------------------------------------------------- the corpus

CASES = [
    # --- ingest: files on disk
    Case("ingest-truncated-image", "ingest", "image PNG cut short by 100 bytes",
         r"ulm_000001_000020_leftImg8bit\.png: truncated PNG",
         _ingest(lambda r, i, l: i.write_bytes(i.read_bytes()[:-100]))),
    Case("ingest-zero-byte-image", "ingest", "image file of 0 bytes",
         r"ulm_000001_000020_leftImg8bit\.png: empty file", _ingest(lambda r, i, l: i.write_bytes(b""))),
    Case("ingest-corrupt-image", "ingest", "PNG signature followed by garbage",
         r"ulm_000001_000020_leftImg8bit\.png: not a decodable image",
         _ingest(lambda r, i, l: i.write_bytes(b"\x89PNG\r\n\x1a\n" + _junk(64) + b"IEND\xaeB`\x82"))),
    Case("ingest-16bit-image", "ingest", "16-bit RGB image where 8-bit is expected",
         r"ulm_000001_000020_leftImg8bit\.png.*16-bit|ulm_000001_000020_leftImg8bit\.png.*uint16",
         _ingest(lambda r, i, l: F.write_rgb(i, np.full((32, 64, 3), 4000, np.uint16)))),
    Case("ingest-label-wrong-size", "ingest", "label 64x16 for a 64x32 image",
         r"ulm_000001_000020_gtFine_labelIds\.png is 64x16 but its image",
         _ingest(lambda r, i, l: F.write_gray(l, np.full((16, 64), 7, np.uint8)))),
    Case("ingest-label-16bit", "ingest", "16-bit label where 8-bit ids are expected",
         r"ulm_000001_000020_gtFine_labelIds\.png: uint16 label where 8-bit is expected",
         _ingest(lambda r, i, l: F.write_gray(l, np.full((32, 64), 7, np.uint16)))),
    Case("ingest-label-rgb", "ingest", "3-channel colour label where single-channel ids are expected",
         r"ulm_000001_000020_gtFine_labelIds\.png",
         _ingest(lambda r, i, l: F.write_rgb(l, np.full((32, 64, 3), 7, np.uint8)))),
    Case("ingest-unknown-ids", "ingest", "label ids 40/41 outside the Cityscapes table",
         r"label ids \[40, 41\] are outside the 'cityscapes' table .*ulm_000001_000020_gtFine_labelIds\.png.*unknown_ids",
         _ingest(lambda r, i, l: F.write_gray(l, _ids_with(40, 41)))),
    Case("ingest-label-missing", "ingest", "an image without its label file",
         r"label missing for 1 of 2 .*ulm_000001_000020", _ingest(lambda r, i, l: l.unlink())),
    Case("ingest-unknown-format", "ingest", "--format kitti", r"field 'format'",
         _ingest(lambda r, i, l: None, extra=["--format", "kitti"])),
    Case("ingest-jpeg-label", "ingest", "JPEG bytes under a *_labelIds.png name (lossy ids)",
         r"ulm_000001_000020_gtFine_labelIds\.png: JPEG bytes under a \.png name",
         _ingest(lambda r, i, l: l.write_bytes(_jpeg((32, 64))))),
    Case("ingest-jpeg-image-as-png", "ingest", "JPEG bytes under a *_leftImg8bit.png name",
         r"ulm_000001_000020_leftImg8bit\.png: JPEG bytes under a \.png name",
         _ingest(lambda r, i, l: i.write_bytes(_jpeg()))),
    Case("ingest-image-is-directory", "ingest", "a directory where an image file belongs",
         r"are directories, not files: \S+ulm_000001_000020_leftImg8bit\.png",
         _ingest(lambda r, i, l: _into_directory(i))),
    Case("ingest-label-is-directory", "ingest", "a directory where a label file belongs",
         r"label \S+ulm_000001_000020_gtFine_labelIds\.png is a directory",
         _ingest(lambda r, i, l: _into_directory(l))),
    Case("ingest-dataset-being-written", "ingest", "another live run holds the dataset split's writer lease",
         r"dataset split ds/train of \S+ is being written by another run: writer lease \S+/datasets/ds/train/"
         r"\.writer\.dakd-lease is held by node-7:4242:5eed",
         lambda w, tmp: (_leased((tmp / "out").as_uri() + "/datasets/ds/train"), _ingest(lambda r, i, l: None)(w, tmp))[1]),
    Case("ingest-huge-png-header", "ingest", "PNG whose header declares 100000x100000 pixels",
         r"ulm_000001_000020_leftImg8bit\.png: header declares 100000x100000 pixels",
         _ingest(lambda r, i, l: i.write_bytes(_png_declaring(100000, 100000)))),
    Case("ingest-all-void-labels", "ingest", "every label pixel is void (id 0 = unlabeled -> 255)",
         r"every label pixel of cityscapes split 'train' from \S+/cs is void",
         _ingest(lambda r, i, l: [F.write_gray(p, np.zeros((32, 64), np.uint8))
                                  for p in (r / "gtFine/train/ulm").glob("*_labelIds.png")])),
    # --- training: manifests, objects, configs, checkpoints, losses
    Case("pretrain-empty-manifest", "pretrain", "manifest with the right schema and no rows",
         r"manifest file://\S+/m/manifest\.parquet is empty", _train("pretrain", _empty_manifest)),
    Case("pretrain-manifest-not-found", "pretrain", "manifest URI that does not exist",
         r"field 'source_manifest': no object at 'file://\S+/nowhere/manifest\.parquet'",
         _train("pretrain", lambda w, tmp: {"source_manifest": (tmp / "nowhere" / "manifest.parquet").as_uri()})),
    Case("pretrain-manifest-not-parquet", "pretrain", "manifest that is not Parquet",
         r"manifest file://\S+/o/manifest\.parquet is not a readable Parquet file",
         _train("pretrain", lambda w, tmp: {"source_manifest": _object("manifest.parquet", b"PAR1 nope")(tmp)})),
    Case("pretrain-missing-object", "pretrain", "manifest row pointing at a deleted image",
         r"object not found: file://\S+/gone\.png",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(
             w, tmp, mutate=lambda rows, s: [{**rows[0], "image_uri": s.url("gone.png")}, *rows[1:]])})),
    Case("pretrain-corrupt-object", "pretrain", "manifest row pointing at a corrupt stored image",
         r"file://\S+/m/broken\.png",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(
             w, tmp, mutate=_replace_first("image_uri", b"\x89PNG\r\n\x1a\n" + b"\0" * 50))})),
    Case("pretrain-16bit-object", "pretrain", "stored image is 16-bit",
         r"file://\S+/m/broken\.png",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(
             w, tmp, mutate=_replace_first("image_uri", _png16(tmp)))})),
    Case("pretrain-label-wrong-size", "pretrain", "stored label smaller than its image",
         r"label file://\S+/m/broken\.png is 64x16 but image",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(
             w, tmp, mutate=_replace_first("label_uri", encode_png(np.zeros((16, 64), np.uint8))))})),
    Case("pretrain-unlabelled-manifest", "pretrain", "unlabelled manifest where labels are required",
         r"manifest file://\S+/tgt/train/manifest\.parquet has 2 samples without label_uri",
         _train("pretrain", lambda w, tmp: {"source_manifest": w["tgt"]})),
    Case("pretrain-config-unknown-key", "pretrain", "YAML config with an unknown key",
         r"field 'learning_rate': Extra inputs are not permitted",
         _train("pretrain", lambda w, tmp: {"_config": _yaml(tmp, "learning_rate: 0.1\n")})),
    Case("pretrain-config-wrong-type", "pretrain", "YAML config with momentum: fast",
         r"field 'momentum'", _train("pretrain", lambda w, tmp: {"_config": _yaml(tmp, "momentum: fast\n")})),
    Case("pretrain-config-out-of-range", "pretrain", "--iterations 0", r"field 'iterations'",
         _train("pretrain", lambda w, tmp: {"iterations": 0})),
    Case("pretrain-config-inf", "pretrain", "YAML config with lr: .inf",
         r"field 'lr': Input should be a finite number",
         _train("pretrain", lambda w, tmp: {"lr": None, "_config": _yaml(tmp, "lr: .inf\n")})),
    Case("pretrain-flag-inf", "pretrain", "--lr inf", r"field 'lr': Input should be a finite number",
         _train("pretrain", lambda w, tmp: {"lr": "inf"})),
    Case("pretrain-config-nan-in-tuple", "pretrain", "YAML config with scale_range: [0.5, .nan]",
         r"field 'scale_range\.1': Input should be a finite number",
         _train("pretrain", lambda w, tmp: {"_config": _yaml(tmp, "scale_range: [0.5, .nan]\n")})),
    Case("pretrain-config-duplicate-key", "pretrain", "YAML config with lr twice",
         r"config file \S+config\.yaml: duplicate key 'lr' \(lines 1 and 3\)",
         _train("pretrain", lambda w, tmp: {"lr": None, "_config": _yaml(tmp, "lr: 0.01\nmomentum: 0.9\nlr: 1.0\n")})),
    Case("pretrain-config-binary", "pretrain", "--config of random bytes",
         r"config file \S+/o/config\.yaml is not a YAML text file",
         _train("pretrain", lambda w, tmp: {"_config": _object("config.yaml", _junk(64))(tmp)[len("file://"):]})),
    Case("pretrain-config-directory", "pretrain", "--config naming a directory",
         r"config file \S+ is a directory", _train("pretrain", lambda w, tmp: {"_config": str(tmp)})),
    Case("pretrain-tracking-db-read-only", "pretrain", "MLflow sqlite database opened read-only",
         r"MLflow tracking database \S+ro\.db\S* cannot be written \(attempt to write a readonly database\)",
         _train("pretrain", _readonly_tracking_db)),
    Case("pretrain-out-being-written", "pretrain", "another live run holds --out's writer lease",
         r"training output \S+/run is being written by another run: writer lease \S+/run/\.writer\.dakd-lease "
         r"is held by node-7:4242:5eed \(it expires in \d+ s", _train("pretrain", _leased_train_out)),
    Case("pretrain-manifest-uri-dotdot", "pretrain", "manifest image_uri escaping its store with ../",
         r"manifest file://\S+/m/manifest\.parquet: row 0 \('src_000'\) image_uri .* does not resolve inside",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(w, tmp, mutate=_row(
             image_uri=lambda s: s.url("image") + "/../../../../../etc/passwd"))})),
    Case("pretrain-manifest-uri-absolute", "pretrain", "manifest image_uri that is an absolute path",
         r"manifest file://\S+/m/manifest\.parquet: row 0 \('src_000'\) image_uri '/etc/passwd' is outside",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(w, tmp, mutate=_row(image_uri="/etc/passwd"))})),
    Case("pretrain-manifest-uri-other-scheme", "pretrain", "manifest label_uri on another scheme (s3://)",
         r"manifest file://\S+/m/manifest\.parquet: row 0 \('src_000'\) label_uri 's3://\S+' is outside",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(
             w, tmp, mutate=_row(label_uri="s3://elsewhere/labels/src_000.png"))})),
    Case("pretrain-manifest-wrong-height", "pretrain", "manifest height 16 for a 64x32 image",
         r"image file://\S+/m/image/src_000\.png is 64x32 but manifest \S+ records 64x16",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(w, tmp, mutate=_row(height=16))})),
    Case("pretrain-object-sha256-mismatch", "pretrain", "stored image replaced after ingest (sha256 differs)",
         r"image file://\S+/m/image/src_000\.png has sha256 <?\w+>?, but manifest \S+ recorded",
         _train("pretrain", lambda w, tmp: {"source_manifest": _manifest(w, tmp, mutate=_swapped_object)})),
    Case("pretrain-lr-absurd", "pretrain", "--lr 1e30 (a learning rate above 10)",
         r"field 'lr': Input should be less than or equal to 10", _train("pretrain", lambda w, tmp: {"lr": 1e30})),
    Case("adapt-d-lr-absurd", "adapt", "d_lr: 1000.0 in the --config YAML",
         r"field 'd_lr': Input should be less than or equal to 10",
         _train("adapt", lambda w, tmp: {"_config": _yaml(tmp, "d_lr: 1000.0\n")})),
    Case("pretrain-weight-decay-absurd", "pretrain", "weight_decay: 5 in the --config YAML",
         r"field 'weight_decay': Input should be less than or equal to 1",
         _train("pretrain", lambda w, tmp: {"_config": _yaml(tmp, "weight_decay: 5\n")})),
    Case("pretrain-nan-loss", "pretrain", "aux_weight 1e30 (loss weights have no upper bound) drives the loss to NaN",
         r"step \d+: loss term '\w+' is (nan|inf)", _train("pretrain", lambda w, tmp: {"aux_weight": 1e30, "iterations": 6})),
    Case("adapt-init-other-network", "adapt", "--init checkpoint of deeplabv2_thin for a deeplabv2_tiny run",
         r"checkpoint file://\S+/thin\.pt holds network 'deeplabv2_thin'",
         _train("adapt", lambda w, tmp: {"init": _other_network(tmp)})),
    Case("adapt-init-wrong-classes", "adapt", "--init checkpoint with 7 classes for a 19-class run",
         r"file://\S+/c7\.pt", _train("adapt", lambda w, tmp: {"init": _wrong_classes(tmp)})),
    Case("adapt-init-not-a-checkpoint", "adapt", "--init file of random bytes",
         r"file://\S+/o/junk\.pt is not a readable dakd checkpoint",
         _train("adapt", lambda w, tmp: {"init": _object("junk.pt", _junk(256))(tmp)})),
    Case("adapt-init-malicious-pickle", "adapt", "--init pickle whose __reduce__ would run code",
         r"file://\S+/o/evil\.pt is not a readable dakd checkpoint",
         _train("adapt", lambda w, tmp: {"init": _malicious_checkpoint(tmp)})),
    Case("adapt-init-nan-weights", "adapt", "--init checkpoint holding a NaN weight",
         r"checkpoint file://\S+/o/nan\.pt holds non-finite values? in model\.\S+",
         _train("adapt", lambda w, tmp: {"init": _nan_checkpoint(tmp)})),
    Case("distill-stale-cache", "distill", "teacher cache made by another teacher (sha256 mismatch)",
         r"teacher cache file://\S+/index\.parquet is stale",
         _train("distill", lambda w, tmp: {"teacher": make_checkpoint((tmp / "t2.pt").as_uri(), seed=9)})),
    Case("distill-cache-not-parquet", "distill", "--teacher-cache that is not Parquet",
         r"teacher cache index file://\S+/o/index\.parquet is not a valid Parquet file",
         _train("distill", lambda w, tmp: {"teacher_cache": _object("index.parquet", b"junk")(tmp)})),
    Case("distill-cache-flipped-bit", "distill", "one bit of a stored cache shard flipped",
         r"teacher cache shard file://\S+/cache/shards/shard_00000\.bin is corrupt: sha256",
         _train("distill", lambda w, tmp: {"teacher_cache": _copied_cache(w, tmp, _flip_bit)})),
    Case("distill-cache-shard-key-escapes", "distill", "cache index whose shard_key is ../../../../etc/passwd",
         r"teacher cache index file://\S+/cache/index\.parquet: sample '\w+' has shard_key '\.\./\S+' outside",
         _train("distill", lambda w, tmp: {"teacher_cache": _copied_cache(w, tmp, _escaping_shard_key)})),
    # --- cache-teacher
    Case("cache-teacher-not-a-checkpoint", "cache-teacher", "--teacher of random bytes",
         r"file://\S+/o/t\.pt is not a readable dakd checkpoint",
         _cache(lambda w, tmp: (_object("t.pt", _junk(128))(tmp), [w["src"]]))),
    Case("cache-teacher-slice-being-written", "cache-teacher", "another live run computes the same cache slice",
         r"teacher cache \S+/teacher_cache/x \(slice-0-of-1\) is being written by another run: writer lease "
         r"\S+/\.slice-0-of-1\.dakd-lease is held by node-7:4242:5eed",
         lambda w, tmp: (_leased((tmp / "cache").as_uri() + "/teacher_cache/x", "slice-0-of-1"),
                         _cache(lambda w, tmp: (w["teacher"], [w["src"]]))(w, tmp))[1]),
    Case("cache-teacher-duplicate-ids", "cache-teacher", "the same manifest twice (duplicate sample ids)",
         r"sample_id 'src_000' appears in both", _cache(lambda w, tmp: (w["teacher"], [w["src"], w["src"]]))),
    # --- export / evaluate
    Case("export-not-a-checkpoint", "export", "--model of random bytes",
         r"file://\S+/o/m\.pt is not a readable dakd checkpoint",
         lambda w, tmp: (["export", "--model", _object("m.pt", _junk(64))(tmp), "--out", (tmp / "x").as_uri(),
                          "--no-mlflow", "--device", "cpu"], [(tmp / "x").as_uri() + "/export.json"])),
    Case("evaluate-onnx-not-onnx", "evaluate", ".onnx file that is not ONNX (sha256 recorded correctly)",
         r"student_fp32\.onnx", _onnx_case(b"this is not an onnx model", None)),
    Case("evaluate-onnx-sha256-mismatch", "evaluate", ".onnx whose bytes differ from export.json's sha256",
         r"sha256 mismatch for file://\S+/student_fp32\.onnx", _onnx_case(b"tampered bytes", "0" * 64)),
    Case("evaluate-resolution-0x0", "evaluate", "--resolution 0x0",
         r"field 'resolution\.0': Input should be greater than 0", _evaluate(resolution="0x0")),
    Case("export-resolution-0x0", "export", "--resolution 0x0",
         r"field 'resolution\.0': Input should be greater than 0", _export(resolution="0x0")),
    Case("export-opset-999", "export", "--opset 999", r"field 'opset': Value error, opset 999 is newer than \d+",
         _export(opset=999)),
    Case("export-parity-all-void", "export", "--val-manifest whose every label pixel is void (255)",
         r"parity manifest file://\S+/m/manifest\.parquet: every label pixel of its 2 rows is void",
         lambda w, tmp: _export(val_manifest=_manifest(w, tmp, mutate=_void_labels), resolution="32x64")(w, tmp)),
    # --- submit (refused before any KFP server is contacted: port 9 would refuse the connection)
    Case("submit-params-duplicate-key", "submit", "--config YAML setting params.train_lr twice",
         r"config file \S+/config\.yaml: duplicate key 'train_lr' \(lines 2 and 4\)",
         lambda w, tmp: (["submit", "--host", "http://127.0.0.1:9", "--config",
                          _yaml(tmp, "params:\n  train_lr: 0.01\n  train_seed: 1\n  train_lr: 1.0\n")], [])),
    Case("submit-params-lr-absurd", "submit", "--config YAML with params.train_lr 100",
         r"field 'params\.train_lr\.constrained-float': Input should be less than or equal to 10",
         lambda w, tmp: (["submit", "--host", "http://127.0.0.1:9", "--config",
                          _yaml(tmp, "params:\n  train_lr: 100.0\n")], [])),
    # --- score
    Case("score-prediction-id-19", "score", "prediction PNG with id 19 (one past the 19 classes)",
         r"prediction \S+/pred/ulm_000000_000019\.png holds ids \[19\] outside the train ids",
         _score(_pred_with(19))),
    Case("score-prediction-id-200", "score", "prediction PNG with id 200",
         r"prediction \S+/pred/ulm_000000_000019\.png holds ids \[200\]", _score(_pred_with(200))),
    Case("score-ground-truth-unknown-id", "score", "ground-truth label id 40 outside the Cityscapes table",
         r"ulm_000000_000019_gtFine_labelIds\.png", _score(lambda pred, gt: F.write_gray(
             gt / "gtFine/val/ulm/ulm_000000_000019_gtFine_labelIds.png", _ids_with(40)))),
]


def _gone(target: str) -> bool:
    return not (uri_exists(target) if "://" in target else Path(target).exists())


def _normalise(message: str, tmp: Path) -> str:
    text = message.replace(tmp.as_uri(), "<tmp>").replace(str(tmp), "<tmp>")
    text = re.sub(r"file:///\S*?/badstore\d+", "<store>", text)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # terminal colours in torch's message
    text = re.sub(r"[0-9a-f]{64}", "<sha256>", " ".join(text.split()))
    # Long messages: keep the start (what failed) and the end (the file and the reason).
    return text if len(text) <= 240 else f"{text[:100]} ... {text[-130:]}"


OBSERVED: dict[str, str] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_naming_the_culprit_and_publishes_nothing(case, world, tmp_path, capsys, mlflow_uri):
    torch.set_num_threads(1)
    argv, outputs = case.setup(world, tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"{case.id}: exit {code}\n{err[-2000:]}"
    prefix = f"dakd {case.stage}: error: "
    assert prefix in err, err[-2000:]  # (library log lines may come before it)
    message = err[err.index(prefix) + len(prefix):]
    assert re.search(case.expect, message, re.S), f"{case.id}: {err[-2000:]}"
    for target in outputs:
        assert _gone(target), f"{case.id} published {target}"
    assert not (tmp_path / "PWNED").exists()  # the malicious pickle never ran
    OBSERVED[case.id] = _normalise(message, tmp_path)


def _table(messages: dict[str, str]) -> str:
    rows = ["| # | case | stage | bad input | message (exit 2, nothing published) |", "|---|---|---|---|---|"]
    for n, c in enumerate(CASES, 1):
        message = messages.get(c.id, "").replace("|", "\\|")
        rows.append(f"| {n} | `{c.id}` | {c.stage} | {c.input} | {message} |")
    return "\n".join(rows)


def test_doc_table_lists_every_case():
    """docs/reliability.md's table is this module's CASES (regenerate: see the module docstring)."""
    text = DOC.read_text() if DOC.exists() else ""
    if os.environ.get("DAKD_WRITE_RELIABILITY_DOC") == "1":
        # Cases this run did not execute (-k) keep the message of the run that last wrote them.
        head, _, rest = text.partition(BEGIN)
        section, _, tail = rest.partition(END)
        kept = dict(re.findall(r"^\| \d+ \| `([^`]+)` \|[^|]+\|[^|]+\| (.*) \|$", section, re.M))
        messages = {c.id: OBSERVED.get(c.id) or kept.get(c.id, "").replace("\\|", "|") for c in CASES}
        missing = [i for i, m in messages.items() if not m]
        assert not missing, f"no message yet for {missing}: run these cases too"
        DOC.write_text(f"{head}{BEGIN}\n{_table(messages)}\n{END}{tail}")
        text = DOC.read_text()
    assert len(CASES) >= 25
    section = text.partition(BEGIN)[2].partition(END)[0]
    documented = re.findall(r"^\| \d+ \| `([^`]+)` \| ([^|]+) \| ([^|]+) \|", section, re.M)
    assert [(i, s.strip(), d.strip()) for i, s, d in documented] == [(c.id, c.stage, c.input) for c in CASES]
