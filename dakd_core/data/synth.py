"""Built-in demo data: a procedural driving-scene domain pair written in real dataset layouts.

`generate()` renders N scenes of one domain and writes them the way the real datasets are laid
out, so the demo goes through the same ingest as real data:

- source  -> GTA5 layout: images/00001.png (RGB) + labels/00001.png (P-mode palette PNG whose
  indices are Cityscapes labelIds, as in real GTA5). One split per output directory.
- target  -> Cityscapes layout: leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png
  + gtFine/{split}/{city}/{city}_{seq:06d}_000019_gtFine_labelIds.png.
- target with weather=True -> ACDC layout, N images per condition:
  rgb_anon/{cond}/{split}/{seq}/{seq}_frame_{n:06d}_rgb_anon.png
  + gt/{cond}/{split}/{seq}/{seq}_frame_{n:06d}_gt_labelIds.png.

Every scene is a pure function of (seed, domain, split, index, condition), so output is
reproducible byte for byte, independent of --workers, and splits never share scenes. Files are
written atomically; `synth_info.json` (the parameters of every part written into the directory)
is updated last, and a part is removed from it before it is regenerated.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import id2label
from PIL import Image
from pydantic import Field, field_validator
from tqdm import tqdm

from dakd_core.config import StrictConfig, build_config
from dakd_core.data.synth_scene import build_scene
from dakd_core.data.synth_style import CONDITIONS, render
from dakd_core.errors import ConfigError, DataError

INFO_FILE = "synth_info.json"
INFO_FORMAT = "dakd-synth/1"
DOMAINS = ("source", "target")
# The default target look: chosen where source-only sits well below the target oracle and
# adaptation closes a clear part of the gap (the strength curve is in docs/results.md).
DEFAULT_SHIFT = 0.45
CITIES = ("dakdorf", "pixelstadt", "rasterburg", "voxelheim")  # 100 consecutive scenes per city
ACDC_SEQ_BASE = {"fog": 1000, "night": 2000, "rain": 3000, "snow": 4000}  # GOPRxxxx per condition

# Cityscapes colours by labelId (void ids black): the palette of GTA5-style label PNGs and previews.
LABEL_ID_COLOURS = np.zeros((256, 3), np.uint8)
for _id, _label in id2label.items():
    if 0 <= _id < 256:
        LABEL_ID_COLOURS[_id] = _label.color if _label.trainId not in (255, -1) else (0, 0, 0)


class SynthConfig(StrictConfig):
    out_dir: str
    domain: Literal["source", "target"]
    n: int = Field(gt=0, description="images (per condition with weather)")
    size: tuple[int, int] = (256, 128)  # W, H
    seed: int = Field(default=0, ge=0)
    split: str = "train"
    weather: bool = False
    conditions: tuple[Literal["fog", "night", "rain", "snow"], ...] = CONDITIONS
    workers: int = Field(default=1, ge=1)
    shift: float = Field(
        default=DEFAULT_SHIFT, ge=0, le=1,
        description="target only: strength of the appearance shift, 0 = the source's look, 1 = the full "
                    "camera look (palette, textures, shadows, haze, blur, noise, response curve)")
    target_layout: Literal["source", "camera"] = Field(
        default="source",
        description="target only: scene geometry. 'source': layouts and class frequencies drawn from the "
                    "source's distribution (as GTA5 vs Cityscapes); 'camera': the camera car's own geometry "
                    "(higher camera, narrow streets, crowded sidewalks, ego hood) - a label shift on top, "
                    "the harder setting")

    @field_validator("size")
    @classmethod
    def _size_ok(cls, v):
        if v[0] < 16 or v[1] < 16:
            raise ValueError("width and height must be at least 16 pixels")
        return v

    @field_validator("split")
    @classmethod
    def _split_ok(cls, v):
        # a directory name in the layouts; "_" would break Cityscapes/ACDC file-name parsing
        if not re.fullmatch(r"[A-Za-z0-9-]+", v):
            raise ValueError("split must be letters, digits or '-' (e.g. train, val, tune)")
        return v



@dataclass(frozen=True)
class SynthResult:
    out_dir: str
    layout: str  # gta5 | cityscapes | acdc
    num_images: int
    info_path: str
    label_pixels: dict[str, int]  # Cityscapes label name -> pixels written


def parse_size(text: str) -> tuple[int, int]:
    """'256x128' -> (256, 128); anything else is a ConfigError naming the field."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"field 'size': expected WxH such as 256x128, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def scene_rng(seed: int, domain: str, split: str, index: int, condition: str | None) -> np.random.Generator:
    """The RNG of one scene: a pure function of what identifies it (stable across runs/machines)."""
    words = [seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index,
             zlib.crc32((condition or "clear").encode())]
    return np.random.default_rng(np.random.SeedSequence(words))


def render_sample(domain: str, size: tuple[int, int], seed: int, split: str, index: int,
                  condition: str | None = None, shift: float = DEFAULT_SHIFT,
                  target_layout: str = "source") -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3, Cityscapes labelIds uint8 HxW) of one scene (`shift`, `target_layout`:
    see SynthConfig; the source ignores both)."""
    rng = scene_rng(seed, domain, split, index, condition)
    geometry = "source" if domain == "source" or target_layout == "source" else "target"
    scene = build_scene(geometry, size[0], size[1], rng)
    return render(scene, domain, rng, condition, shift), scene.labels()


def layout_of(domain: str, weather: bool) -> str:
    return "acdc" if weather else ("gta5" if domain == "source" else "cityscapes")


def sample_paths(layout: str, split: str, index: int, condition: str | None = None) -> tuple[str, str]:
    """(image, label) paths relative to the output root, exactly as the real datasets name them."""
    if layout == "gta5":
        name = f"{index + 1:05d}.png"
        return f"images/{name}", f"labels/{name}"
    if layout == "cityscapes":
        city = CITIES[(index // 100) % len(CITIES)]
        stem = f"{city}_{index:06d}_000019"
        return (f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")
    seq = f"GOPR{ACDC_SEQ_BASE[condition] + index // 100:04d}"
    stem = f"{seq}_frame_{index % 100:06d}"
    return (f"rgb_anon/{condition}/{split}/{seq}/{stem}_rgb_anon.png",
            f"gt/{condition}/{split}/{seq}/{stem}_gt_labelIds.png")


def encode_label(label_ids: np.ndarray, layout: str) -> bytes:
    if layout == "gta5":  # palette PNG: the pixel values are the indices (labelIds)
        img = Image.fromarray(label_ids, mode="P")
        img.putpalette(LABEL_ID_COLOURS.tobytes())
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    return _png(label_ids)


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array[..., ::-1] if array.ndim == 3 else array)
    if not ok:
        raise DataError("PNG encoding failed")
    return buf.tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory + rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {e}") from None


def _render_chunk(task) -> np.ndarray:
    """Worker: render and write some scenes; returns their labelId pixel histogram."""
    out_dir, domain, size, seed, split, layout, condition, look, indices = task
    hist = np.zeros(256, np.int64)
    for index in indices:
        rgb, label = render_sample(domain, size, seed, split, index, condition, *look)
        image_rel, label_rel = sample_paths(layout, split, index, condition)
        write_atomic(Path(out_dir) / image_rel, _png(rgb))
        write_atomic(Path(out_dir) / label_rel, encode_label(label, layout))
        hist += np.bincount(label.ravel(), minlength=256)
    return hist


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core: no nested thread pools


def _read_info(path: Path) -> dict:
    if not path.exists():
        return {"format": INFO_FORMAT, "parts": {}}
    try:
        info = json.loads(path.read_text())
        if info.get("format") != INFO_FORMAT or not isinstance(info.get("parts"), dict):
            raise ValueError(f"not a {INFO_FORMAT} file")
    except ValueError as e:
        raise DataError(f"{path} is not a valid synth info file ({e}); remove it or use another --out") from None
    return info


def _write_info(path: Path, info: dict) -> None:
    write_atomic(path, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())


def generate(out_dir: str | os.PathLike, domain: str, n: int, size: tuple[int, int] = (256, 128), seed: int = 0,
             split: str = "train", weather: bool = False, conditions=None, workers: int = 1,
             progress: bool = True, shift: float | None = None, target_layout: str | None = None) -> SynthResult:
    """Render and write `n` scenes (per condition with weather); see the module docstring."""
    overrides = dict(out_dir=str(out_dir), domain=domain, n=n, size=size, seed=seed, split=split,
                     weather=weather, workers=workers, conditions=conditions, shift=shift,
                     target_layout=target_layout)
    cfg = build_config(SynthConfig, None, **overrides)
    if cfg.weather and cfg.domain != "target":
        raise ConfigError("field 'weather': weather conditions are rendered for the target domain only")
    if cfg.weather and not cfg.conditions:
        raise ConfigError("field 'conditions': name at least one of " + ", ".join(CONDITIONS))
    layout = layout_of(cfg.domain, cfg.weather)
    root = Path(cfg.out_dir)
    info_path = root / INFO_FILE
    info = _read_info(info_path)
    part = f"{layout}/{cfg.split}"
    conds = list(cfg.conditions) if cfg.weather else [None]
    params = {"layout": layout, "domain": cfg.domain, "split": cfg.split, "n": cfg.n, "size": list(cfg.size),
              "seed": cfg.seed, "weather": cfg.weather, "conditions": conds if cfg.weather else []}
    look = (cfg.shift, cfg.target_layout) if cfg.domain == "target" else (0.0, "source")
    if cfg.domain == "target":
        params.update(shift=cfg.shift, target_layout=cfg.target_layout)
    done = info["parts"].get(part)
    if done and {k: done.get(k) for k in params} == params and _all_written(root, layout, cfg.split, cfg.n, conds):
        # same settings, complete: the output would be byte-identical, so nothing to do
        return SynthResult(str(root), layout, done["num_images"], str(info_path), done["label_pixels"])
    others = [p for p in info["parts"] if p.startswith("gta5/") and p != part]
    if layout == "gta5" and others:
        raise ConfigError(f"field 'out_dir': {root} already holds GTA5-layout split {others[0]!r}; the GTA5 "
                          "layout has one split per directory, use another --out")
    if info["parts"].pop(part, None) is not None:  # not complete again until this run finishes
        _write_info(info_path, info)

    total = cfg.n * len(conds)
    chunk = max(1, min(32, cfg.n // (cfg.workers * 4) or 1))
    tasks = [(str(root), cfg.domain, tuple(cfg.size), cfg.seed, cfg.split, layout, c, look, range(i, min(i + chunk, cfg.n)))
             for c in conds for i in range(0, cfg.n, chunk)]
    hist = np.zeros(256, np.int64)
    bar = tqdm(total=total, unit="img", desc=f"synth {part}", dynamic_ncols=True,
               disable=not progress or os.environ.get("DAKD_NO_PROGRESS") == "1")
    with bar:
        if cfg.workers == 1:
            for t in tasks:
                hist += _render_chunk(t)
                bar.update(len(t[-1]))
        else:
            ctx = multiprocessing.get_context("spawn")  # safe with threads in the parent
            with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_worker_init) as pool:
                for t, h in zip(tasks, pool.map(_render_chunk, tasks)):
                    hist += h
                    bar.update(len(t[-1]))

    label_pixels = {id2label[i].name: int(c) for i, c in enumerate(hist) if c and i in id2label}
    info = _read_info(info_path)
    if layout == "gta5":  # GTA5 has no split folders: a split list names the files, as upstream
        names = "".join(Path(sample_paths(layout, cfg.split, i)[0]).name + "\n" for i in range(cfg.n))
        write_atomic(root / "gta5_list" / f"{cfg.split}.txt", names.encode())
    info["parts"][part] = {**params, "num_images": total, "label_pixels": label_pixels}
    _write_info(info_path, info)  # last: marks the part complete
    return SynthResult(str(root), layout, total, str(info_path), label_pixels)


def _all_written(root: Path, layout: str, split: str, n: int, conds) -> bool:
    return all((root / rel).is_file() for c in conds for i in range(n) for rel in sample_paths(layout, split, i, c))


def colorize_label_ids(label_ids: np.ndarray) -> np.ndarray:
    return LABEL_ID_COLOURS[label_ids]


def preview(path: str | os.PathLike, size: tuple[int, int] = (256, 128), seed: int = 0, columns: int = 4) -> Path:
    """A grid of samples: source, target and each weather condition, each image over its labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (row name, domain, condition, look): the shift knob, the harder camera layout, each weather
    rows = [("source", "source", None, {})]
    rows += [(f"target shift {s:g}" + (" (default)" if s == DEFAULT_SHIFT else ""), "target", None, {"shift": s})
             for s in (0.3, DEFAULT_SHIFT, 1.0)]
    rows += [("target, camera layout", "target", None, {"shift": 1.0, "target_layout": "camera"})]
    rows += [(f"target/{c}", "target", c, {}) for c in CONDITIONS]
    fig, axes = plt.subplots(2 * len(rows), columns, figsize=(columns * 2.6, len(rows) * 2.7))
    for r, (name, domain, cond, look) in enumerate(rows):
        for c in range(columns):
            rgb, label = render_sample(domain, size, seed, "preview", c, cond, **look)
            axes[2 * r, c].imshow(rgb)
            axes[2 * r + 1, c].imshow(colorize_label_ids(label))
            if c == 0:
                axes[2 * r, c].set_ylabel(name, fontsize=8)
                axes[2 * r + 1, c].set_ylabel("labels", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"dakd synth: source (game-like) vs target (camera-like), {size[0]}x{size[1]}, seed {seed}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=85)
    plt.close(fig)
    out = Path(path)
    write_atomic(out, buf.getvalue())
    return out
