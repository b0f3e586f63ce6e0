"""Appearance of the procedural scenes: palettes, textures, camera effects and weather.

"source" looks like a game engine: a saturated palette, flat shading and clean aliased edges.
"target" looks like a car camera: another (muted, class-specific) palette, textures, shadows,
haze, lens blur, vignetting and sensor noise, optionally under fog / night / rain / snow. Palette,
texture, noise and illumination are the part of the domain shift that adaptation can learn to
ignore; the geometry in `synth_scene` is the part it cannot.

`shift` (0..1) moves the target's look continuously from the source's (0: the source palette, no
camera effects) to the full camera (1): colours are interpolated between the two palettes (same
draw), and every camera effect (texture contrast, shadows, haze, white balance, vignetting, blur,
noise, response curve) is scaled by it. The random draws do not depend on `shift`, so one scene
seen at two strengths differs only in its look.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from dakd_core.data.synth_scene import GROUND, L, Scene

CONDITIONS = ("fog", "night", "rain", "snow")

# role -> colour choices (RGB). Source: the saturated "game" palette.
SOURCE_PALETTE: dict[str, list[tuple[int, int, int]]] = {
    "sky": [(70, 150, 255), (95, 170, 250)], "far_building": [(150, 140, 175), (175, 150, 140)],
    "leaves": [(40, 165, 40), (70, 185, 30), (30, 140, 60)], "trunk": [(125, 80, 40)],
    "terrain": [(145, 205, 60), (175, 195, 70)], "sidewalk": [(210, 190, 160), (190, 190, 205)],
    "road": [(78, 78, 92), (95, 88, 98)], "lane": [(245, 245, 245), (250, 220, 60)],
    "wall": [(205, 160, 110), (180, 180, 195)], "fence": [(155, 110, 70), (120, 130, 145)],
    "facade": [(205, 80, 60), (235, 190, 90), (90, 160, 205), (225, 222, 210), (165, 100, 175)],
    "window": [(40, 60, 115), (60, 95, 145)], "pants": [(30, 40, 125), (40, 40, 40), (125, 80, 40)],
    "shirt": [(225, 40, 40), (40, 140, 225), (245, 200, 40), (40, 185, 80), (245, 245, 245)],
    "skin": [(235, 180, 140), (165, 110, 70)], "hair": [(40, 30, 20), (205, 160, 60)],
    "wheel": [(25, 25, 25)], "glass": [(30, 45, 70)], "trim": [(50, 50, 55)],
    "paint_car": [(225, 30, 30), (30, 80, 225), (250, 250, 250), (250, 200, 0), (20, 20, 20), (0, 165, 80)],
    "paint_truck": [(240, 240, 240), (250, 130, 0), (60, 60, 205)],
    "paint_bus": [(250, 200, 0), (225, 40, 40), (40, 120, 225)],
    "paint_train": [(240, 240, 240), (225, 30, 30), (250, 200, 0)],
    "paint_motorcycle": [(235, 30, 30), (20, 20, 20), (40, 80, 235)],
    "head": [(255, 255, 220)], "tail": [(235, 20, 20)], "housing": [(30, 30, 30), (235, 200, 0)],
    "lamp_green": [(0, 235, 80)], "lamp_amber": [(255, 180, 0)], "lamp_red": [(255, 20, 20)],
    "lamp_off": [(45, 45, 45)], "sign_red": [(235, 20, 20)], "sign_white": [(250, 250, 250)],
    "sign_blue": [(20, 80, 225)], "sign_yellow": [(250, 210, 0)], "pole": [(165, 165, 165), (90, 90, 95)],
    "lamphead": [(125, 125, 125)], "frame": [(40, 40, 40), (205, 30, 30)], "ego": [(20, 20, 25)],
}
# Target: a camera's muted world, and class-specific differences a global colour shift cannot undo
# (grey-beige buildings instead of colourful ones, olive vegetation, mostly grey/black/white cars).
TARGET_PALETTE = {**SOURCE_PALETTE, **{
    "sky": [(190, 200, 215), (160, 185, 215), (215, 215, 222)], "far_building": [(130, 130, 128)],
    "leaves": [(70, 90, 45), (85, 100, 55), (55, 75, 40)], "trunk": [(70, 60, 50)],
    "terrain": [(120, 122, 75), (135, 125, 92)], "sidewalk": [(140, 136, 130), (160, 150, 140)],
    "road": [(112, 107, 106), (96, 96, 100)], "lane": [(200, 200, 195)],
    "wall": [(150, 145, 130), (120, 115, 110)], "fence": [(110, 110, 105), (140, 130, 110)],
    "facade": [(150, 140, 125), (178, 166, 150), (125, 110, 100), (160, 160, 160), (140, 95, 75)],
    "window": [(60, 65, 72), (92, 100, 112)], "pants": [(40, 45, 62), (30, 30, 30), (90, 85, 80)],
    "shirt": [(60, 60, 66), (110, 40, 45), (50, 70, 100), (150, 150, 145), (180, 170, 150)],
    "skin": [(200, 160, 135), (120, 90, 70)], "hair": [(35, 30, 25), (120, 95, 60)],
    "paint_car": [(62, 64, 68), (182, 182, 184), (25, 25, 28), (110, 30, 30), (40, 55, 90), (140, 140, 135)],
    "paint_truck": [(190, 190, 190), (100, 110, 120)], "paint_bus": [(190, 190, 180), (160, 60, 40)],
    "paint_train": [(200, 200, 190), (150, 40, 40)], "paint_motorcycle": [(30, 30, 30), (120, 30, 30)],
    "pole": [(95, 97, 100), (70, 72, 70)], "housing": [(35, 35, 35)], "ego": [(40, 42, 48)],
}}
JITTER = {"source": 6.0, "target": 14.0}  # per-object colour spread (std, 0..255)

# Texture materials (target only): 0 flat, 1 grain, 2 foliage, 3 smooth stains/clouds, 4 lattice.
MATERIAL = {"road": 1, "sidewalk": 1, "lane": 1, "wall": 1, "far_building": 1, "trunk": 1, "trim": 1,
            "leaves": 2, "terrain": 2, "sky": 3, "facade": 3, "fence": 4}
NIGHT_EMIT = {"window": (255, 200, 120), "head": (255, 250, 230), "tail": (255, 30, 20),
              "lamp_red": (255, 40, 30), "lamp_amber": (255, 190, 40), "lamp_green": (60, 255, 140),
              "lamphead": (255, 225, 160)}
TEX = 256  # texture tile size (periodic)
_GROUND_IDS = np.zeros(256, bool)
_GROUND_IDS[[L["road"], L["sidewalk"], L["terrain"]]] = True


@lru_cache(maxsize=1)
def texture_bank() -> np.ndarray:
    """(5, TEX, TEX) float32 multiplicative textures, mean ~1, periodic (FFT-blurred noise).

    Fixed seed: textures are part of the target "camera", the same for every image; each image
    samples them at a random offset.
    """
    rng = np.random.default_rng(20240607)
    fy = np.fft.fftfreq(TEX)[:, None]
    fx = np.fft.fftfreq(TEX)[None, :]

    def blurred(sigma):
        noise = rng.standard_normal((TEX, TEX))
        kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
        out = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
        return out / out.std()

    yy, xx = np.mgrid[:TEX, :TEX]
    lattice = ((xx + yy) % 5 == 0) | ((xx - yy) % 5 == 0)
    bank = np.stack([
        np.ones((TEX, TEX)),
        1 + 0.10 * blurred(0.7),
        np.clip(1 + 0.16 * blurred(0.8) + 0.14 * blurred(2.5) + 0.1 * blurred(8), 0.4, 1.6),
        1 + 0.07 * blurred(20) + 0.03 * blurred(3),
        np.where(lattice, 0.55, 1.0),
    ])
    return bank.astype(np.float32)


def _texture(material: np.ndarray, rng) -> np.ndarray:
    """HxW texture factors: each pixel's material, sampled at a random offset of the periodic bank."""
    H, W = material.shape
    rows = (np.arange(H) + rng.integers(TEX)) % TEX
    cols = (np.arange(W) + rng.integers(TEX)) % TEX
    flat = material * (TEX * TEX) + (rows * TEX)[:, None] + cols[None, :]  # one gather, no 5-plane crop
    return texture_bank().reshape(-1)[flat]


def _instance_colours(scene: Scene, domain: str, rng, shift: float = 1.0) -> np.ndarray:
    """One colour per instance; parts of one object with the same role share it. For the target,
    the source and target palette colours of the same draw are mixed by `shift`."""
    mix = 0.0 if domain == "source" else shift
    jitter = (1 - mix) * JITTER["source"] + mix * JITTER["target"]
    groups: dict[tuple[int, str], int] = {}
    group_of = np.fromiter((groups.setdefault(kr, len(groups)) for kr in zip(scene.colour_key, scene.role)),
                           np.intp, len(scene.role))
    pick = rng.random(len(groups))
    noise = rng.normal(0, 1.0, (len(groups), 3)) * jitter

    def base(palette):
        return np.array([palette[role][int(p * len(palette[role]))] for (_, role), p in zip(groups, pick)], float)

    colours = base(SOURCE_PALETTE) if mix == 0 else (1 - mix) * base(SOURCE_PALETTE) + mix * base(TARGET_PALETTE)
    return np.clip(colours.reshape(-1, 3) + noise, 0, 255).astype(np.float32)[group_of]


def _depth_map(scene: Scene) -> np.ndarray:
    cam = scene.camera
    depth = np.asarray(scene.depth, np.float32)[scene.inst]
    rows = np.arange(scene.height, dtype=np.float32)[:, None] + 0.5
    row_depth = np.where(rows > cam.horizon + 0.5, cam.f * cam.height / np.maximum(rows - cam.horizon, 0.5), 300.0)
    return np.where(depth == GROUND, np.broadcast_to(row_depth, depth.shape), depth)


def _side_shading(scene: Scene, lit_side: int, dark: float) -> np.ndarray:
    """Per-instance brightness: street-side planes facing away from the sun are darker."""
    side = np.asarray(scene.side)
    return np.where(side == -lit_side, dark, 1.0).astype(np.float32)


def render(scene: Scene, domain: str, rng: np.random.Generator, condition: str | None = None,
           shift: float = 1.0) -> np.ndarray:
    """RGB uint8 image of a painted scene; `shift` (target only): see the module docstring."""
    colours = _instance_colours(scene, domain, rng, shift)
    if domain == "source":
        colours *= _side_shading(scene, -1, 0.8)[:, None]
        img = colours[scene.inst]
        sky = scene.inst == 0
        grad = 0.8 + 0.3 * np.clip(np.arange(scene.height) / max(scene.camera.horizon, 1), 0, 1)
        img[sky] *= np.broadcast_to(grad[:, None], sky.shape)[sky][:, None]
        return np.clip(img, 0, 255).astype(np.uint8)
    return _render_camera(scene, colours, rng, condition, shift)


def _toward(value: float, neutral: float, strength: float) -> float:
    """`value` moved from `neutral` by the fraction `strength` (a camera effect at that strength)."""
    return neutral + strength * (value - neutral)


def _render_camera(scene: Scene, colours, rng, condition, shift: float = 1.0):
    H, W = scene.height, scene.width
    u = rng.uniform
    lit_side = int(rng.choice((-1, 1)))
    colours *= _side_shading(scene, lit_side, _toward(u(0.55, 0.8), 0.8, shift))[:, None]
    img = np.take(colours, scene.inst, axis=0)
    # textures, sampled at a random offset of the periodic bank
    material = np.array([MATERIAL.get(r, 0) for r in scene.role], np.intp)[scene.inst]
    img *= _toward(_texture(material, rng), 1.0, shift)[..., None]

    labels = np.asarray(scene.label, np.uint8)[scene.inst]
    ground = _GROUND_IDS[labels]
    depth = _depth_map(scene)
    if condition != "night":  # cast shadow of the sunny side's buildings across the street
        img[ground & _shadow_mask(scene, lit_side, rng)] *= _toward(u(0.45, 0.7), 1.0, shift)

    if condition is None:
        t = np.exp(-shift * u(0.002, 0.008) * depth)[..., None]
        img = img * t + np.asarray((200, 205, 215), np.float32) * (1 - t)
        noise_std = shift * u(2.0, 5.0)
    else:
        img, noise_std = WEATHER[condition](scene, img, labels, ground, depth, rng)

    balance = rng.uniform(0.92, 1.08, 3) * u(0.85, 1.12)  # white balance, exposure
    img *= np.asarray(_toward(balance, 1.0, shift), np.float32)
    img *= _vignette(H, W, round(shift, 4))[..., None]
    sigma = shift * max(0.35, u(0.45, 0.95) * W / 256)
    if sigma >= 0.1:  # below that the kernel is a single tap
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = np.empty_like(img)
    cv2.setRNGSeed(int(rng.integers(1 << 31)))  # cv2's generator: 4x faster than numpy's here
    cv2.randn(noise, 0.0, (noise_std,) * 3)
    img = cv2.add(img, noise)
    gamma = _toward(u(0.85, 1.15), 1.0, shift)
    curve = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(np.clip(img + 0.5, 0, 255).astype(np.uint8), curve)  # sensor response curve


@lru_cache(maxsize=8)
def _vignette(H, W, strength: float = 1.0):
    yy, xx = np.mgrid[:H, :W]
    r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
    return (1 - 0.18 * strength * r2).astype(np.float32)


def _shadow_mask(scene: Scene, side: int, rng) -> np.ndarray:
    """A ground-plane band shaded by the buildings on `side` (perspective-correct quad)."""
    rh, edge = scene.extent
    z0 = rng.uniform(2, 25)
    z1 = z0 + rng.uniform(8, 50)
    X0, X1 = side * edge, side * (edge - rng.uniform(1.5, 2 * rh + 1))
    mask = np.zeros((scene.height, scene.width), np.uint8)
    pts = scene.camera.project([X0, X1, X1, X0], [z0, z0, z1, z1])
    cv2.fillPoly(mask, [np.round(np.clip(pts, -1e6, 1e6)).astype(np.int32)], 1)
    return mask.astype(bool)


# --- weather: each returns (image, sensor noise std) ---------------------------------------------


def _fog(scene, img, labels, ground, depth, rng):
    airlight = np.asarray((205, 207, 212), np.float32) * rng.uniform(0.9, 1.05)
    t = np.exp(-rng.uniform(0.03, 0.08) * depth)[..., None]
    return img * t + airlight * (1 - t), rng.uniform(3.0, 5.0)


def _night(scene, img, labels, ground, depth, rng):
    H, W = scene.height, scene.width
    img = img * (rng.uniform(0.1, 0.2) * np.asarray((0.8, 0.85, 1.1), np.float32))
    # the own headlights light the road ahead
    cone = np.clip((np.arange(H, dtype=np.float32) - scene.camera.horizon) / (H - scene.camera.horizon + 1), 0, 1)
    img += (ground * cone[:, None] ** 2)[..., None] * np.float32(rng.uniform(40, 90))
    emit = np.zeros((len(scene.role), 3), np.float32)
    for i, (role, lit) in enumerate(zip(scene.role, scene.lit)):
        if lit and role in NIGHT_EMIT:
            emit[i] = NIGHT_EMIT[role]
    glowing = emit.any(1)[scene.inst]
    img[glowing] = emit[scene.inst][glowing] * np.float32(rng.uniform(0.75, 1.0))
    glow = np.zeros((H, W, 3), np.float32)
    for x, y, r, role in scene.lights:  # halo around each light, a few light-sizes wide
        cv2.circle(glow, (int(x), int(y)), int(min(max(1, 0.5 * r), 0.02 * W)), NIGHT_EMIT[role], -1)
    img += cv2.GaussianBlur(glow, (0, 0), max(1.0, 0.01 * W)) * np.float32(0.6)
    return img, rng.uniform(6.0, 12.0)


def _rain(scene, img, labels, ground, depth, rng):
    H, W = scene.height, scene.width
    grey = img.mean(-1, keepdims=True)
    img = (0.55 * img + 0.45 * grey) * np.float32(rng.uniform(0.6, 0.8))
    img[labels == L["sky"]] = np.asarray((150, 155, 162), np.float32) * rng.uniform(0.8, 1.0)
    # wet ground mirrors what stands above it (rows mirrored about the horizon, smeared)
    hz = int(scene.camera.horizon)
    src_rows = np.clip(2 * hz - np.arange(H), 0, H - 1)
    reflection = cv2.blur(img[src_rows], (1, max(3, H // 16)))
    wet = (ground & (labels != L["terrain"]))[..., None]
    img = np.where(wet, 0.7 * img + 0.35 * reflection, img)
    streaks = np.zeros((H, W), np.float32)
    n = int(0.004 * H * W)
    x0, y0 = rng.uniform(0, W, n), rng.uniform(0, H, n)
    length, slant = rng.uniform(0.04, 0.1, n) * H, rng.uniform(-0.25, 0.25)
    for xs, ys, ln in zip(x0, y0, length):
        cv2.line(streaks, (int(xs), int(ys)), (int(xs + slant * ln), int(ys + ln)), 1.0, 1)
    img += cv2.GaussianBlur(streaks, (0, 0), 0.6)[..., None] * np.float32(70)
    return img, rng.uniform(4.0, 7.0)


def _snow(scene, img, labels, ground, depth, rng):
    H, W = scene.height, scene.width
    cover = rng.uniform(0.45, 0.85)
    patchy = _texture(np.full((H, W), 2), rng)  # snow lies in patches (foliage noise)
    cover_map = np.zeros((H, W), np.float32)
    cover_map[ground] = cover
    cover_map[labels == L["vegetation"]] = cover * 0.4
    cover_map = np.clip(cover_map * patchy, 0, 1)[..., None]
    img = img * (1 - cover_map) + np.float32(235) * cover_map
    img = 0.75 * img + 45.0  # flat, bright light
    img[labels == L["sky"]] = np.asarray((212, 212, 218), np.float32)
    flakes = np.zeros((H, W), np.float32)
    n = int(0.003 * H * W)
    for xs, ys, r in zip(rng.uniform(0, W, n), rng.uniform(0, H, n), rng.uniform(0.3, 1.5, n) * max(1, W / 256)):
        cv2.circle(flakes, (int(xs), int(ys)), int(round(r)), 1.0, -1)
    img += cv2.GaussianBlur(flakes, (0, 0), 0.7)[..., None] * np.float32(120)
    return img, rng.uniform(3.0, 6.0)


WEATHER = {"fog": _fog, "night": _night, "rain": _rain, "snow": _snow}
