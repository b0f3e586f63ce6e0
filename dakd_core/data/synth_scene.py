"""Scene geometry of the procedural driving scenes: where every class goes, per domain.

A scene is a pinhole camera above a flat ground plane looking down a street. Ground regions (road,
sidewalk, terrain) are quads in the ground plane, street sides are vertical planes (facades,
walls, fences, hedges) and everything else is an upright billboard sprite standing on the ground
at (X lateral, Z depth) metres. All of it is projected and painted far-to-near into an instance
map, so occlusion is right; every painted part carries its Cityscapes labelId, a colour role, a
texture material, a depth and an optional light colour (night). `synth_style` turns that into RGB.

The two domains differ in geometry on purpose (the part of the shift that output alignment cannot
undo): camera height, horizon row and focal length, street widths, object counts and sizes, the
ego-vehicle hood of a real car camera, and how often each class appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

L = {name: name2label[name].id for name in name2label}  # Cityscapes labelIds by class name

SHIFT = 4  # cv2 sub-pixel bits: thin far poles keep their exact position
GROUND = -1.0  # depth sentinel: depth comes from the pixel row (ground plane)
SKY_DEPTH = 1e4
_LIM = float(1 << 26)  # projections of points near Z=0 explode; cv2 needs int32 coordinates
LIT_ROLES = frozenset({"head", "tail", "lamp_red", "lamp_amber", "lamp_green", "lamphead"})


@dataclass(frozen=True)
class Geometry:
    """Distribution of scene geometry for one domain (ranges are uniform, counts Poisson means)."""

    focal: float  # focal length as a fraction of the image width
    cam_height: tuple[float, float]
    horizon: tuple[float, float]  # horizon row as a fraction of the image height
    road_half: tuple[float, float]
    sidewalk: tuple[float, float]
    side_weights: dict[str, float]  # street-side segment kinds
    building_height: tuple[float, float]
    n_cars: float
    p_parked_row: float
    p_truck: float
    p_bus: float
    p_train: float
    n_persons: float
    n_cyclists: float
    n_parked_bikes: float
    n_poles: float  # per side
    n_trees: float  # per side
    size: tuple[float, float]  # object size multiplier
    near: float  # nearest depth at which objects are placed
    ego_hood: bool


GEOMETRY = {
    # Game-engine look-alike: low camera, high horizon, wide multi-lane roads, many big vehicles.
    "source": Geometry(
        focal=0.75, cam_height=(1.0, 1.35), horizon=(0.34, 0.42), road_half=(5.5, 9.0),
        sidewalk=(1.8, 3.2),
        side_weights={"building": 0.55, "vegetation": 0.15, "terrain": 0.1, "wall": 0.1, "fence": 0.1},
        building_height=(10, 30), n_cars=6.0, p_parked_row=0.3, p_truck=0.6, p_bus=0.45, p_train=0.3,
        n_persons=2.5, n_cyclists=0.9, n_parked_bikes=0.4, n_poles=2.0, n_trees=1.0,
        size=(1.0, 1.15), near=6.0, ego_hood=False,
    ),
    # Car-camera look-alike: higher camera, lower horizon, narrow European streets, crowded
    # sidewalks, parked rows (occlusion), more trees and fences, an ego-vehicle hood at the bottom.
    "target": Geometry(
        focal=0.95, cam_height=(1.5, 1.9), horizon=(0.44, 0.52), road_half=(3.0, 5.0),
        sidewalk=(2.5, 5.0),
        side_weights={"building": 0.45, "vegetation": 0.25, "terrain": 0.05, "wall": 0.1, "fence": 0.15},
        building_height=(8, 22), n_cars=3.5, p_parked_row=0.75, p_truck=0.3, p_bus=0.3, p_train=0.3,
        n_persons=5.0, n_cyclists=1.6, n_parked_bikes=1.0, n_poles=3.0, n_trees=2.0,
        size=(0.88, 1.0), near=4.0, ego_hood=True,
    ),
}


@dataclass
class Camera:
    f: float
    height: float
    horizon: float  # row
    vx: float  # vanishing column

    def project(self, X, Z, v=0.0):
        """Image (x, y) of the point X metres right, Z ahead, v above the ground (broadcasts)."""
        Z = np.asarray(Z, float)
        x = self.vx + self.f * np.asarray(X, float) / Z
        y = self.horizon + self.f * (self.height - np.asarray(v, float)) / Z
        out = np.empty(np.broadcast_shapes(x.shape, y.shape) + (2,))
        out[..., 0], out[..., 1] = x, y
        return out


@dataclass
class Scene:
    """The painted instance map and per-instance attributes (index = instance id)."""

    width: int
    height: int
    camera: Camera
    inst: np.ndarray  # HxW int32
    label: list[int] = field(default_factory=list)
    role: list[str] = field(default_factory=list)
    depth: list[float] = field(default_factory=list)
    side: list[int] = field(default_factory=list)  # -1/+1 for street-side planes (shading), else 0
    lit: list[bool] = field(default_factory=list)  # emits light at night
    colour_key: list[int] = field(default_factory=list)  # parts of one object share a colour draw
    lights: list[tuple[float, float, float, str]] = field(default_factory=list)  # x, y, radius px, role
    extent: tuple[float, float] = (0.0, 0.0)  # road half-width, outer sidewalk edge (metres)

    def new(self, label: str, role: str, depth: float, key: int, side: int = 0, lit: bool = False) -> int:
        self.label.append(L[label])
        self.role.append(role)
        self.depth.append(depth)
        self.side.append(side)
        self.lit.append(lit)
        self.colour_key.append(key)
        return len(self.label) - 1

    # --- painting (pixel coordinates) -------------------------------------------------------
    def poly(self, pts_px, iid: int, clip: bool = False) -> None:
        self.polys([pts_px], iid, clip)

    def polys(self, polys_px, iid: int, clip: bool = True) -> None:
        """Fill polygons (pixel coordinates, k x 2 each) with one instance id.

        clip=True for ground and street-side geometry, whose projections near Z=0 explode past
        int32; sprites stand at Z >= near and skip the (costly for small arrays) clipping.
        """
        if clip:
            pts = [np.minimum(np.maximum(np.asarray(p) * (1 << SHIFT), -_LIM), _LIM).astype(np.int32) for p in polys_px]
        else:
            pts = [(np.asarray(p) * (1 << SHIFT)).astype(np.int32) for p in polys_px]
        cv2.fillPoly(self.inst, pts, int(iid), cv2.LINE_8, SHIFT)

    def ellipse(self, c_px, axes_px, iid: int, thickness: int = -1) -> None:
        c = tuple(int(round(v * (1 << SHIFT))) for v in c_px)
        ax = tuple(max(1, int(round(v * (1 << SHIFT)))) for v in axes_px)
        cv2.ellipse(self.inst, c, ax, 0, 0, 360, int(iid), thickness, cv2.LINE_8, SHIFT)

    def line(self, p0, p1, width_px: float, iid: int) -> None:
        a = tuple(int(round(v * (1 << SHIFT))) for v in p0)
        b = tuple(int(round(v * (1 << SHIFT))) for v in p1)
        cv2.line(self.inst, a, b, int(iid), max(1, int(round(width_px))), cv2.LINE_8, SHIFT)

    def labels(self) -> np.ndarray:
        return np.asarray(self.label, np.uint8)[self.inst]


# --- sprites: parts in metres (u right of the foot point, v above ground) -----------------------
# A part is (label, role, kind, geometry): kind "poly" (k x 2 array), "ell" (cu, cv, ru, rv),
# "line" (u0, v0, u1, v1, width), "ring" (cu, cv, r, width).


def _rect(u0, v0, u1, v1):
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], float)


def _person(label, h, rng, base=0.0):
    """Upright pedestrian (or the upper body of a rider when base > 0)."""
    w = h * rng.uniform(0.24, 0.3)
    parts = []
    if base == 0.0:  # legs, slightly apart
        gap = w * rng.uniform(0.05, 0.3)
        parts += [(label, "pants", "poly", _rect(-w * 0.45, 0, -gap / 2, h * 0.48)),
                  (label, "pants", "poly", _rect(gap / 2, 0, w * 0.45, h * 0.48))]
    else:  # legs down to the pedals
        parts += [(label, "pants", "line", (-w * 0.2, base, -w * 0.3, base - h * 0.3, w * 0.3)),
                  (label, "pants", "line", (w * 0.2, base, w * 0.3, base - h * 0.3, w * 0.3))]
    top = base + h * (0.48 if base == 0.0 else 0.05)
    torso = np.array([[-w * 0.5, top], [w * 0.5, top], [w * 0.55, top + h * 0.33],
                      [-w * 0.55, top + h * 0.33]])
    parts += [(label, "shirt", "poly", torso),
              (label, "shirt", "line", (-w * 0.55, top + h * 0.3, -w * 0.7, top + h * 0.02, w * 0.2)),
              (label, "shirt", "line", (w * 0.55, top + h * 0.3, w * 0.7, top + h * 0.02, w * 0.2)),
              (label, "skin", "ell", (0, top + h * 0.42, h * 0.065, h * 0.08)),
              (label, "hair", "ell", (0, top + h * 0.47, h * 0.06, h * 0.035))]
    return parts


def _car(front: bool, s):
    w, h = 1.8 * s, 1.45 * s
    return [("car", "wheel", "poly", _rect(-w / 2 + 0.05, 0, -w / 2 + 0.35, 0.32)),
            ("car", "wheel", "poly", _rect(w / 2 - 0.35, 0, w / 2 - 0.05, 0.32)),
            ("car", "paint", "poly", _rect(-w / 2, 0.22, w / 2, h * 0.62)),
            ("car", "paint", "poly", np.array([[-w * 0.45, h * 0.62], [w * 0.45, h * 0.62],
                                               [w * 0.36, h], [-w * 0.36, h]])),
            ("car", "glass", "poly", np.array([[-w * 0.38, h * 0.66], [w * 0.38, h * 0.66],
                                               [w * 0.32, h * 0.95], [-w * 0.32, h * 0.95]])),
            ("car", "trim", "poly", _rect(-w / 2, 0.22, w / 2, 0.38)),
            ("car", "head" if front else "tail", "poly", _rect(-w / 2 + 0.06, h * 0.45, -w / 2 + 0.36, h * 0.56)),
            ("car", "head" if front else "tail", "poly", _rect(w / 2 - 0.36, h * 0.45, w / 2 - 0.06, h * 0.56))]


def _big_vehicle(label, front: bool, s, rng):
    """Truck, bus or tram seen from behind or ahead: a tall box with a window band."""
    w = {"truck": 2.5, "bus": 2.55, "train": 2.65}[label] * s
    h = {"truck": rng.uniform(3.0, 3.8), "bus": 3.1, "train": 3.4}[label] * s
    parts = [(label, "wheel", "poly", _rect(-w / 2 + 0.1, 0, -w / 2 + 0.5, 0.5)),
             (label, "wheel", "poly", _rect(w / 2 - 0.5, 0, w / 2 - 0.1, 0.5)),
             (label, "paint", "poly", _rect(-w / 2, 0.35, w / 2, h))]
    if label == "truck":
        parts.append(("truck", "trim", "poly", _rect(-w / 2, 0.35, w / 2, 0.7)))
        if front:
            parts.append(("truck", "glass", "poly", _rect(-w * 0.42, h * 0.55, w * 0.42, h * 0.85)))
    else:
        lo = 0.5 if front else 0.55
        parts.append((label, "glass", "poly", _rect(-w * 0.44, h * lo, w * 0.44, h * 0.88)))
    if label == "train":  # pantograph: thin, distinctive
        parts += [("train", "trim", "line", (-0.5, h, 0.0, h + 0.7, 0.06)),
                  ("train", "trim", "line", (0.0, h + 0.7, 0.5, h, 0.06)),
                  ("train", "trim", "line", (-0.6, h + 0.7, 0.6, h + 0.7, 0.08))]
    light = "head" if front else "tail"
    parts += [(label, light, "poly", _rect(-w / 2 + 0.1, 0.8, -w / 2 + 0.4, 1.0)),
              (label, light, "poly", _rect(w / 2 - 0.4, 0.8, w / 2 - 0.1, 1.0))]
    return parts


def _cyclist(motor: bool, s, rng):
    """Two-wheeler with its rider, seen from behind (rider label on top, vehicle label below)."""
    veh = "motorcycle" if motor else "bicycle"
    parts = [(veh, "wheel", "poly", _rect(-0.05 * s - 0.04 * motor, 0, 0.05 * s + 0.04 * motor, 0.66 * s))]
    if motor:
        parts += [(veh, "paint", "poly", _rect(-0.32 * s, 0.3 * s, 0.32 * s, 0.85 * s)),
                  (veh, "tail", "poly", _rect(-0.08 * s, 0.75 * s, 0.08 * s, 0.82 * s))]
    else:
        parts += [(veh, "frame", "line", (0, 0.3 * s, 0, 0.95 * s, 0.05 * s))]
    parts += [(veh, "frame", "line", (-0.32 * s, 1.0 * s, 0.32 * s, 1.0 * s, 0.05 * s))]
    parts += _person("rider", rng.uniform(1.6, 1.85) * s, rng, base=0.9 * s)
    return parts


def _parked_bike(s):
    """Bicycle standing on the sidewalk, side view: two rings and a frame (thin structures)."""
    r, t = 0.34 * s, 0.05 * s
    return [("bicycle", "frame", "ring", (-0.52 * s, r, r, t)), ("bicycle", "frame", "ring", (0.52 * s, r, r, t)),
            ("bicycle", "frame", "line", (-0.52 * s, r, 0, r, t)), ("bicycle", "frame", "line", (0, r, 0.3 * s, 0.85 * s, t)),
            ("bicycle", "frame", "line", (-0.52 * s, r, -0.2 * s, 0.85 * s, t)),
            ("bicycle", "frame", "line", (-0.2 * s, 0.85 * s, 0.3 * s, 0.85 * s, t)),
            ("bicycle", "frame", "line", (0.3 * s, 0.85 * s, 0.52 * s, r, t))]


def _pole(h, arm_dir, rng, kind):
    """Pole with a traffic light, a traffic sign or a street lamp; the arm reaches over the road."""
    parts = [("pole", "pole", "poly", _rect(-0.08, 0, 0.08, h))]
    if kind == "light":
        if rng.random() < 0.5:  # hanging over the road on an arm
            reach = rng.uniform(2.0, 4.0) * arm_dir
            parts.append(("pole", "pole", "line", (0, h - 0.3, reach, h - 0.3, 0.12)))
            u, v = reach, h - 1.3
        else:
            u, v = 0.0, h - 1.0
        parts.append(("traffic light", "housing", "poly", _rect(u - 0.18, v, u + 0.18, v + 0.95)))
        on = rng.integers(3)
        for i, colour in enumerate(("lamp_green", "lamp_amber", "lamp_red")):
            parts.append(("traffic light", colour if i == on else "lamp_off", "ell", (u, v + 0.17 + 0.3 * i, 0.1, 0.1)))
    elif kind == "sign":
        v = min(h - 0.4, rng.uniform(2.2, 3.0))
        shape = rng.integers(4)
        if shape == 0:
            parts.append(("traffic sign", "sign_red", "ell", (0, v, 0.33, 0.33)))
            parts.append(("traffic sign", "sign_white", "ell", (0, v, 0.22, 0.22)))
        elif shape == 1:
            parts.append(("traffic sign", "sign_red", "poly", np.array([[-0.4, v - 0.3], [0.4, v - 0.3], [0, v + 0.4]])))
            parts.append(("traffic sign", "sign_white", "poly", np.array([[-0.24, v - 0.2], [0.24, v - 0.2], [0, v + 0.2]])))
        elif shape == 2:
            parts.append(("traffic sign", "sign_blue", "ell", (0, v, 0.32, 0.32)))
        else:
            parts.append(("traffic sign", "sign_yellow", "poly", _rect(-0.35, v - 0.35, 0.35, v + 0.35)))
    else:  # street lamp
        parts.append(("pole", "pole", "line", (0, h, 1.5 * arm_dir, h + 0.3, 0.1)))
        parts.append(("pole", "lamphead", "poly", _rect(1.5 * arm_dir - 0.3, h + 0.15, 1.5 * arm_dir + 0.3, h + 0.35)))
    return parts


def _tree(rng, s):
    th, cr = rng.uniform(1.8, 3.5) * s, rng.uniform(1.4, 3.2) * s
    parts = [("vegetation", "trunk", "poly", _rect(-0.14 * s, 0, 0.14 * s, th + cr * 0.5))]
    for _ in range(int(rng.integers(3, 6))):
        parts.append(("vegetation", "leaves", "ell", (rng.uniform(-0.5, 0.5) * cr, th + cr * rng.uniform(0.7, 1.3),
                                                      cr * rng.uniform(0.55, 0.9), cr * rng.uniform(0.5, 0.8))))
    return parts


# --- the scene builder ----------------------------------------------------------------------------


def build_scene(geometry: str, width: int, height: int, rng: np.random.Generator) -> Scene:
    """Paint one scene drawn from GEOMETRY[geometry] ("source" or "target")."""
    g = GEOMETRY[geometry]
    u = rng.uniform
    cam = Camera(f=g.focal * width, height=u(*g.cam_height), horizon=u(*g.horizon) * height,
                 vx=width * (0.5 + u(-0.06, 0.06)))
    scene = Scene(width, height, cam, np.zeros((height, width), np.int32))
    key = iter(range(1 << 30))  # colour-draw keys: all parts of one object share one
    scene.new("sky", "sky", SKY_DEPTH, next(key))  # id 0 = the initial fill
    rh, sw = u(*g.road_half), u(*g.sidewalk)
    edge = rh + sw  # outer sidewalk edge: the street-side planes start here
    scene.extent = (rh, edge)
    far, near = 250.0, 0.5

    _skyline(scene, rng, key)
    # Ground: terrain everywhere, then sidewalks and road on top (curbs are sidewalk).
    hz = cam.horizon
    scene.poly([[-1, hz], [width + 1, hz], [width + 1, height + 1], [-1, height + 1]],
               scene.new("terrain", "terrain", GROUND, next(key)))
    gk = next(key)
    for X0, X1, name in ((-edge, edge, "sidewalk"), (-rh, rh, "road")):
        scene.poly(cam.project([X0, X1, X1, X0], [near, near, far, far]), scene.new(name, name, GROUND, gk), True)
    crossing = (u(14, 40), u(10, 16)) if rng.random() < 0.4 else None
    if crossing:  # a side street: road continues sideways, no sidewalk or buildings there
        z0, z1 = crossing[0], sum(crossing)
        scene.poly(cam.project([-80, 80, 80, -80], [z0, z0, z1, z1]), scene.new("road", "road", GROUND, gk), True)
    _lane_marks(scene, rng, rh, crossing, key)

    planes = []
    for side in (-1, 1):
        planes += _street_side(scene, rng, g, side, edge, crossing)
    for depth, draw in sorted(planes, key=lambda t: -t[0]):
        draw()

    objects = _objects(scene, rng, g, rh, sw, crossing)
    for Z, X, parts in sorted(objects, key=lambda t: -t[0]):
        _draw_sprite(scene, X, Z, parts, next(key))
    if g.ego_hood:
        _ego_hood(scene, rng, next(key))
    return scene


def _skyline(scene, rng, key):
    """Distant buildings and tree lines along the horizon (small, far: depth 150 m)."""
    W, hz = scene.width, scene.camera.horizon
    x = -1.0
    while x < W:
        step = rng.uniform(0.03, 0.1) * W
        veg = rng.random() < 0.4
        top = hz - rng.uniform(0.01, 0.1 if veg else 0.16) * scene.height
        iid = scene.new("vegetation" if veg else "building", "leaves" if veg else "far_building", 150.0, next(key))
        scene.poly([[x, hz + 1], [x + step, hz + 1], [x + step, top], [x, top]], iid)
        x += step


def _lane_marks(scene, rng, rh, crossing, key):
    """White dashes between lanes and a zebra crossing: painted, but labelled road."""
    cam = scene.camera
    lanes = max(2, int(round(2 * rh / 3.3)))
    quads = []
    for i in range(1, lanes):
        X = -rh + 2 * rh * i / lanes
        z = np.arange(rng.uniform(1.0, 6.0), 120, 9.0)
        if crossing:
            z = z[(z < crossing[0] - 3) | (z > sum(crossing))]
        quads += list(cam.project([X - 0.08, X + 0.08, X + 0.08, X - 0.08], z[:, None] + [0, 0, 3, 3]))
    if crossing:
        z0 = crossing[0] - 3.5
        X = np.arange(-rh + 0.3, rh - 0.3, 1.0)[:, None]
        quads += list(cam.project(X + [0, 0.5, 0.5, 0], [z0, z0, z0 + 3, z0 + 3]))
    if quads:
        scene.polys(quads, scene.new("road", "lane", GROUND, next(key)))


def _street_side(scene, rng, g, side, edge, crossing):
    """Vertical planes along one side of the street, as (depth, draw) pairs for the painter."""
    cam, out = scene.camera, []
    kinds, weights = zip(*g.side_weights.items())
    cum_weights = np.cumsum(weights)
    z = 1.0
    while z < 160:
        length = rng.uniform(6, 25)
        z0, z1 = z, z + length
        z = z1
        if crossing and z1 > crossing[0] and z0 < sum(crossing):  # the side street cuts through
            z0, z1 = (z0, crossing[0]) if z0 < crossing[0] else (sum(crossing), z1)
            if z1 - z0 < 1.0:
                continue
        kind = kinds[int(np.searchsorted(cum_weights, rng.random() * cum_weights[-1]))]
        key = int(rng.integers(1 << 30))
        if kind in ("wall", "fence"):  # low barrier at the sidewalk edge, something behind it
            hgt = rng.uniform(1.0, 3.2) if kind == "wall" else rng.uniform(1.0, 2.2)
            out.append(_plane(scene, side * edge, z0, z1, (0, hgt), kind, kind, side, key))
            behind = "building" if rng.random() < 0.6 else "vegetation"
            X = side * (edge + rng.uniform(3, 10))
        else:
            behind, X = kind, side * (edge + rng.uniform(0, 3))
        if behind == "building":
            hgt = rng.uniform(*g.building_height)
            out.append(_plane(scene, X, z0, z1, (0, hgt), "building", "facade", side, key, windows=True, rng=rng))
            # the building's end wall facing the camera hides what lies further out
            out.append((z0 - 0.01, lambda X=X, z0=z0, h=hgt, k=key: scene.poly(
                cam.project([X, X + side * 40, X + side * 40, X], [z0] * 4, [0, 0, h, h]),
                scene.new("building", "facade", z0, k, side=-side), True)))
        elif behind == "vegetation":
            tops = rng.uniform(2.5, 9.0, size=max(2, int((z1 - z0) / 3)))
            out.append(_plane(scene, X, z0, z1, tops, "vegetation", "leaves", side, key))
    return out


def _plane(scene, X, z0, z1, heights, label, role, side, key, windows=False, rng=None):
    """A vertical plane at lateral X between depths z0..z1 (heights: (lo, hi) or a bumpy top)."""
    cam = scene.camera
    z0 = max(z0, 0.3)

    def draw():
        if len(heights) == 2 and not isinstance(heights, np.ndarray):
            lo, hi = heights
            pts = cam.project([X] * 4, [z0, z1, z1, z0], [lo, lo, hi, hi])
        else:
            zs = np.linspace(z0, z1, len(heights))
            pts = np.concatenate([cam.project([X, X], [z0, z1]), cam.project([X] * len(zs), zs[::-1], heights[::-1])])
        scene.poly(pts, scene.new(label, role, 0.5 * (z0 + z1), key, side=side), True)
        if windows:
            _windows(scene, X, z0, z1, heights[1], side, key, rng)

    return (0.5 * (z0 + z1), draw)


def _windows(scene, X, z0, z1, hgt, side, key, rng):
    """A window grid on a facade, projected; lit (at night) and dark windows are two instances."""
    cam = scene.camera
    dz, dv = rng.uniform(2.2, 3.5), rng.uniform(2.8, 3.4)
    ww, wh = dz * rng.uniform(0.35, 0.6), dv * rng.uniform(0.35, 0.55)
    zc = np.arange(z0 + dz * 0.5, z1 - ww, dz)
    zc = zc[cam.f * ww * abs(X) / (zc * zc) >= 0.7]  # narrower than a pixel: left to the texture
    vc = np.arange(dv * 0.8, hgt - wh, dv)
    if not len(zc) or not len(vc):
        return
    zz, vv = (a.ravel() for a in np.meshgrid(zc, vc))
    Z = np.stack([zz, zz + ww, zz + ww, zz], 1)
    V = np.stack([vv, vv, vv + wh, vv + wh], 1)
    quads = cam.project(X, Z, V)  # (n, 4, 2)
    lit = rng.random(len(quads)) < 0.3
    for flag in (False, True):
        if (lit == flag).any():
            iid = scene.new("building", "window", float(zc[0]), key, side=side, lit=flag)
            scene.polys(list(quads[lit == flag]), iid)


def _objects(scene, rng, g, rh, sw, crossing):
    """Sprites standing on the ground: (Z, X, parts)."""
    u, out = rng.uniform, []
    size = lambda: u(*g.size)  # noqa: E731 - a draw per object
    lanes = max(2, int(round(2 * rh / 3.3)))
    lane_x = [-rh + 2 * rh * (i + 0.5) / lanes for i in range(lanes)]
    zmax = 70.0

    def lane_slot():
        i = int(rng.integers(lanes))
        return lane_x[i] + u(-0.4, 0.4), lane_x[i] < 0  # left lanes drive towards the camera

    for _ in range(rng.poisson(g.n_cars)):
        X, front = lane_slot()
        out.append((u(g.near, zmax), X, _car(front, size())))
    for name, p in (("truck", g.p_truck), ("bus", g.p_bus), ("train", g.p_train)):
        if rng.random() < p:
            X, front = lane_slot()
            if name == "train":
                X = u(-0.5, 0.5)  # trams run in the middle of the street
            out.append((u(g.near + 4, 55), X, _big_vehicle(name, front, size(), rng)))
    for side in (-1, 1):  # parked rows along the curb: dense and overlapping
        if rng.random() < g.p_parked_row:
            z = u(g.near, 12)
            while z < 60 and rng.random() < 0.85:
                out.append((z, side * (rh - 1.1), _car(side < 0, size())))
                z += u(4.4, 7.5)
        for _ in range(rng.poisson(g.n_poles)):
            r = rng.random()
            kind = "light" if r < 0.35 else ("sign" if r < 0.75 else "lamp")
            out.append((u(g.near, 60), side * (rh + u(0.3, 0.6)), _pole(u(3.5, 8.0), -side, rng, kind)))
        for _ in range(rng.poisson(g.n_trees)):
            out.append((u(g.near + 2, 70), side * (rh + sw - u(0.5, 1.0)), _tree(rng, size())))
        for _ in range(rng.poisson(g.n_parked_bikes)):
            out.append((u(g.near, 30), side * (rh + u(0.6, 1.2)), _parked_bike(size())))
    for _ in range(rng.poisson(g.n_persons)):
        side = 1 if rng.random() < 0.5 else -1
        if crossing is not None and rng.random() < 0.3:  # on the zebra crossing
            Z, X = crossing[0] - u(1.5, 3.0), u(-rh, rh)
        else:
            Z, X = u(g.near, 45), side * (rh + u(0.4, max(0.5, sw - 0.3)))
        out.append((Z, X, _person("person", u(1.55, 1.9) * size(), rng)))
    for _ in range(rng.poisson(g.n_cyclists)):
        side = 1 if rng.random() < 0.5 else -1
        out.append((u(g.near, 45), side * (rh - u(0.5, 1.0)), _cyclist(rng.random() < 0.45, size(), rng)))
    return out


def _draw_sprite(scene, X, Z, parts, key):
    cam = scene.camera
    s = cam.f / Z
    x0, y0 = cam.vx + s * X, cam.horizon + s * cam.height  # foot point
    scale, offset = np.array((s, -s)), np.array((x0, y0))
    if y0 < 0 or x0 < -8 * s or x0 > scene.width + 8 * s:
        return
    to_px = lambda uu, vv: (x0 + s * uu, y0 - s * vv)  # noqa: E731 - billboard: affine in (u, v)
    previous, pending = None, []  # consecutive polygons of one (label, role): one instance, one fill

    def flush():
        if pending:
            scene.polys(pending, scene.new(*previous, Z, key, lit=previous[1] in LIT_ROLES), clip=False)
            pending.clear()

    for label, role, kind, geo in parts:
        role = f"paint_{label}" if role == "paint" else role  # each vehicle class has its paints
        if kind == "poly":
            if (label, role) != previous:
                flush()
                previous = (label, role)
            pending.append(geo * scale + offset)
        else:
            flush()
            previous = None
            iid = scene.new(label, role, Z, key, lit=role in LIT_ROLES)
            if kind == "ell":
                scene.ellipse(to_px(geo[0], geo[1]), (s * geo[2], s * geo[3]), iid)
            elif kind == "line":
                scene.line(to_px(geo[0], geo[1]), to_px(geo[2], geo[3]), s * geo[4], iid)
            else:  # ring
                scene.ellipse(to_px(geo[0], geo[1]), (s * geo[2], s * geo[2]), iid, max(1, int(round(s * geo[3]))))
        if role in LIT_ROLES:  # remembered for the night glow
            c = to_px(*((geo[0] + geo[2]) / 2 if kind == "poly" else geo[:2]))
            scene.lights.append((c[0], c[1], max(1.0, s * 0.5), role))
    flush()


def _ego_hood(scene, rng, key):
    """The camera car's bonnet: labelId 1 (ego vehicle, ignored in training), as in Cityscapes."""
    W, H = scene.width, scene.height
    top = H * (1 - rng.uniform(0.07, 0.12))
    xs = np.linspace(-0.05 * W, 1.05 * W, 24)
    ys = top + (H - top) * 0.9 * ((xs - W / 2) / (0.6 * W)) ** 2
    pts = np.concatenate([np.stack([xs, ys], -1), [[1.05 * W, H + 1], [-0.05 * W, H + 1]]])
    scene.poly(pts, scene.new("ego vehicle", "ego", 1.0, key))
