"""SynthPedes renderer: one pedestrian image plus its exact part label map.

Why this design: every random choice of an image (viewpoint, pose, jitter, clutter, occluder,
noise seed) is sampled first into a plain :class:`View`; :func:`render` is then a pure function
of (identity, camera, view, size). So a test can re-render the *same* image with the occluder
removed, and images are reproducible one by one, independent of generation order.

Drawing is a painter's algorithm over vectorised shapes (trapezoids, ellipses) evaluated on the
shape's bounding box only: each shape writes its colour and its part label where it covers, so
the part in front wins and the label map is disjoint by construction. Occluders and clutter
write label 0 (background). Label ``k`` (1-based) is ``PARTS[k - 1]``.

Conventions (documented in docs/synthpedes.md): exposed arms count as ``upper_body``, exposed
legs as ``lower_body``, face and neck as ``head``. From the front a backpack is fully hidden
behind the torso (zero pixels); from the back it covers the torso; from the side it shows behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reid_explain.data.schema import PARTS
from reid_explain.synthpedes.identities import COLOURS, Identity

LABEL: dict[str, int] = {name: i + 1 for i, name in enumerate(PARTS)}
VIEWPOINTS = ("front", "back", "side")
_AGE_SCALE = {"young": 0.8, "teenager": 0.92, "adult": 1.0, "old": 0.97}


@dataclass(frozen=True)
class Camera:
    """A fixed camera: its colour cast, exposure, scene colours and typical viewpoints."""

    index: int
    gains: tuple[float, float, float]
    offset: float
    wall: tuple[int, int, int]
    ground: tuple[int, int, int]
    horizon: float
    view_probs: tuple[float, float, float]
    palette: tuple[tuple[int, int, int], ...]

    def to_json(self) -> dict:
        return {"index": self.index, "gains": list(self.gains), "offset": self.offset,
                "wall": list(self.wall), "ground": list(self.ground), "horizon": self.horizon,
                "view_probs": list(self.view_probs)}


@dataclass(frozen=True)
class Occluder:
    """An object in front of the person (pole, car, bench): label 0, removes parts from masks."""

    kind: str
    y0: float
    y1: float
    x0: float
    x1: float
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class View:
    """Everything random about one image; fractions are of the image height/width."""

    viewpoint: str
    facing: int
    scale: float
    dx: float
    dy: float
    stride: float
    arm_swing: float
    bag_side: int
    brightness: float
    clutter: tuple[tuple[str, float, float, float, float, tuple[int, int, int]], ...]
    occluder: Occluder | None
    noise_seed: int

    def to_json(self) -> dict:
        occ = self.occluder
        return {"viewpoint": self.viewpoint, "facing": self.facing, "scale": self.scale,
                "dx": self.dx, "dy": self.dy, "stride": self.stride,
                "arm_swing": self.arm_swing, "bag_side": self.bag_side,
                "brightness": self.brightness,
                "occluder": None if occ is None else
                {"kind": occ.kind, "y0": occ.y0, "y1": occ.y1, "x0": occ.x0, "x1": occ.x1}}


@dataclass
class Rendered:
    """An RGB uint8 image (H, W, 3) and its part label map (H, W), 0 = background."""

    image: np.ndarray
    labels: np.ndarray
    view: View
    part_pixels: dict[str, int] = field(default_factory=dict)


def make_cameras(n_cams: int, seed: int) -> list[Camera]:
    """``n_cams`` cameras (1-based indices), each with its own cast and scene, from ``seed``."""
    cameras = []
    for c in range(1, n_cams + 1):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xCA3, c])))
        gains = tuple(float(round(g, 4)) for g in rng.uniform(0.82, 1.15, 3))
        wall = tuple(int(v) for v in rng.integers(60, 200, 3))
        ground = tuple(int(v) for v in rng.integers(50, 160, 3))
        probs = rng.dirichlet([2.0, 2.0, 1.5])
        palette = tuple(tuple(int(v) for v in rng.integers(30, 220, 3)) for _ in range(4))
        cameras.append(Camera(c, gains, float(round(rng.uniform(-15, 15), 3)), wall, ground,
                              float(round(rng.uniform(0.45, 0.8), 4)),
                              tuple(float(round(p, 4)) for p in probs), palette))
    return cameras


def sample_view(rng: np.random.Generator, camera: Camera, occlusion_prob: float = 0.15) -> View:
    """Draw the random parts of one image from ``rng``."""
    viewpoint = VIEWPOINTS[int(rng.choice(3, p=np.asarray(camera.view_probs) /
                                          sum(camera.view_probs)))]
    clutter = []
    for _ in range(int(rng.integers(1, 5))):
        kind = "rect" if rng.random() < 0.6 else "ellipse"
        y0, x0 = rng.uniform(-0.1, 0.9), rng.uniform(-0.2, 0.9)
        hgt, wid = rng.uniform(0.08, 0.5), rng.uniform(0.1, 0.6)
        colour = camera.palette[int(rng.integers(len(camera.palette)))]
        jitter = rng.integers(-25, 26, 3)
        colour = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(colour, jitter, strict=True))
        clutter.append((kind, _r(y0), _r(y0 + hgt), _r(x0), _r(x0 + wid), colour))
    occluder = None
    if rng.random() < occlusion_prob:
        colour = tuple(int(v) for v in rng.integers(40, 200, 3))
        if rng.random() < 0.5:  # a pole or pillar in front
            x0 = rng.uniform(0.2, 0.65)
            occluder = Occluder("pole", 0.0, 1.0, _r(x0), _r(x0 + rng.uniform(0.12, 0.3)), colour)
        else:  # a car, bench or railing hiding the lower part
            occluder = Occluder("box", _r(rng.uniform(0.6, 0.82)), 1.0, _r(rng.uniform(-0.2, 0.2)),
                                _r(rng.uniform(0.8, 1.2)), colour)
    return View(
        viewpoint=viewpoint, facing=1 if rng.random() < 0.5 else -1,
        scale=_r(rng.uniform(0.8, 0.94)), dx=_r(rng.uniform(-0.08, 0.08)),
        dy=_r(rng.uniform(-0.04, 0.04)), stride=_r(rng.uniform(0.0, 0.09)),
        arm_swing=_r(rng.uniform(-0.04, 0.04)), bag_side=1 if rng.random() < 0.5 else -1,
        brightness=_r(rng.uniform(0.85, 1.12)), clutter=tuple(clutter), occluder=occluder,
        noise_seed=int(rng.integers(2**31)),
    )


def _r(x: float) -> float:
    return float(round(float(x), 4))


class _Canvas:
    """Float RGB canvas plus label map; shapes are evaluated on their bounding box only."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.img = np.empty((height, width, 3), np.float32)
        self.lab = np.zeros((height, width), np.uint8)
        self.ys = np.arange(height, dtype=np.float32) + 0.5
        self.xs = np.arange(width, dtype=np.float32) + 0.5

    def _window(self, y0: float, y1: float, x0: float, x1: float):
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, self.h)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, self.w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1), self.ys[r0:r1, None], self.xs[None, c0:c1]

    def _paint(self, sy: slice, sx: slice, mask: np.ndarray, colour, label: int,
               factor: np.ndarray | None = None) -> None:
        if factor is None:
            self.img[sy, sx][mask] = colour
        else:
            col = np.asarray(colour, np.float32) * factor[..., None]
            np.copyto(self.img[sy, sx], col, where=mask[..., None])
        self.lab[sy, sx][mask] = label

    def trap(self, y0: float, y1: float, xc0: float, hw0: float, xc1: float, hw1: float,
             colour, label: int, shade: float = 0.0, pattern=None) -> None:
        """Rows y0..y1; each row spans xc ± hw, both linear in y (limbs, torso, dress, bars)."""
        win = self._window(y0, y1, min(xc0 - hw0, xc1 - hw1), max(xc0 + hw0, xc1 + hw1))
        if win is None:
            return
        sy, sx, yy, xx = win
        t = (yy - y0) / max(y1 - y0, 1e-6)
        xc = xc0 + t * (xc1 - xc0)
        hw = np.maximum(hw0 + t * (hw1 - hw0), 1e-3)
        rel = np.abs(xx - xc) / hw
        mask = (rel <= 1.0) & (yy >= y0) & (yy <= y1)
        factor = None
        if shade:
            factor = 1.0 - shade * rel * rel
        if pattern is not None:
            p = pattern(yy, xx)
            factor = p if factor is None else factor * p
        self._paint(sy, sx, mask, colour, label, factor)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, colour, label: int,
                ymin: float = -np.inf, ymax: float = np.inf, shade: float = 0.0) -> None:
        win = self._window(max(cy - ry, ymin), min(cy + ry, ymax), cx - rx, cx + rx)
        if win is None:
            return
        sy, sx, yy, xx = win
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = (d <= 1.0) & (yy >= ymin) & (yy <= ymax)
        self._paint(sy, sx, mask, colour, label, 1.0 - shade * d if shade else None)

    def rect(self, y0: float, y1: float, x0: float, x1: float, colour, label: int) -> None:
        win = self._window(y0, y1 - 1e-3, x0, x1 - 1e-3)
        if win is None:
            return
        sy, sx, yy, xx = win
        mask = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
        self._paint(sy, sx, mask, colour, label)


def _colour(name: str, shade: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    return np.clip(np.asarray(COLOURS[name], np.float32) + np.asarray(shade, np.float32), 0, 255)


def _background(canvas: _Canvas, camera: Camera, view: View) -> None:
    h, w = canvas.h, canvas.w
    horizon = camera.horizon * h
    ramp = (0.85 + 0.3 * canvas.ys / h)[:, None, None]
    top = np.asarray(camera.wall, np.float32)
    bottom = np.asarray(camera.ground, np.float32)
    canvas.img[:] = np.where((canvas.ys < horizon)[:, None, None], top, bottom) * ramp
    for kind, y0, y1, x0, x1, colour in view.clutter:
        if kind == "rect":
            canvas.rect(y0 * h, y1 * h, x0 * w, x1 * w, colour, 0)
        else:
            canvas.ellipse((y0 + y1) * h / 2, (x0 + x1) * w / 2, (y1 - y0) * h / 2,
                           (x1 - x0) * w / 2, colour, 0)


def _draw_person(cv: _Canvas, person: Identity, view: View) -> None:
    """Draw one person back to front; the order depends on the viewpoint."""
    a = person.as_dict()
    d = person.detail
    h, w = cv.h, cv.w
    s = view.scale * h * d.height * _AGE_SCALE[a["age"]]  # person height in pixels
    cx = w / 2 + view.dx * w
    top = (h - s) / 2 + view.dy * h + (1 - _AGE_SCALE[a["age"]]) * view.scale * h / 2

    def X(x: float) -> float:  # noqa: N802 - body units to pixels, short on purpose
        return cx + x * s

    def Y(y: float) -> float:  # noqa: N802
        return top + y * s

    side = view.viewpoint == "side"
    f = view.facing
    female = a["gender"] == "female"
    b = d.build
    upper = _colour(a["upper_color"], d.upper_shade)
    lower = _colour(a["lower_color"], d.lower_shade)
    skin = np.asarray(d.skin, np.float32)
    hair = _colour("gray" if a["age"] == "old" else d.hair_colour)
    shoe = _colour(d.shoe_colour)
    far = 0.8  # far limbs (side view) are darker

    def pattern(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        yb = (yy - top) / s * d.pattern_freq
        xb = (xx - cx) / s * d.pattern_freq
        if d.pattern == "hstripes":
            on = np.floor(yb) % 2
        elif d.pattern == "vstripes":
            on = np.floor(xb) % 2
        else:
            on = (np.floor(yb) + np.floor(xb)) % 2
        return 1.0 - d.pattern_contrast * on

    pat = None if d.pattern == "plain" or d.pattern_contrast <= 0 else pattern
    sh_hw = (0.09 if female else 0.105) * b
    waist_hw = (0.082 if female else 0.085) * b
    if side:
        sh_hw = waist_hw = 0.065 * b

    def leg(x_hip: float, x_ankle: float, dim: float = 1.0) -> None:
        short_pants = a["clothes"] == "pants" and a["lower_length"] == "short"
        dress = a["clothes"] == "dress"
        cut = 0.94 if (not short_pants and not dress) else (0.66 if short_pants else 0.5)
        t = (cut - 0.5) / 0.44
        x_cut = x_hip + t * (x_ankle - x_hip)
        hw_cut = 0.038 - t * 0.01
        if cut > 0.5:
            cv.trap(Y(0.5), Y(cut), X(x_hip), 0.038 * s * b, X(x_cut), hw_cut * s * b,
                    lower * dim, LABEL["lower_body"], shade=0.25)
        if cut < 0.94:
            cv.trap(Y(cut), Y(0.94), X(x_cut), hw_cut * 0.85 * s * b, X(x_ankle), 0.024 * s * b,
                    skin * dim, LABEL["lower_body"], shade=0.2)
        toe = 0.035 * f if side else 0.0
        cv.ellipse(Y(0.955), X(x_ankle + toe), 0.03 * s, (0.05 if side else 0.032) * s,
                   shoe * dim, LABEL["shoes"], shade=0.2)

    def dress() -> None:
        if a["clothes"] != "dress":
            return
        hem, hw = (0.66, 0.14) if a["lower_length"] == "short" else (0.87, 0.16)
        cv.trap(Y(0.47), Y(hem), X(0.0), waist_hw * s, X(0.0), hw * s * b * (0.75 if side else 1),
                lower, LABEL["lower_body"], shade=0.25)

    def torso() -> None:
        cv.trap(Y(0.15), Y(0.53), X(0.0), sh_hw * s, X(0.0), waist_hw * s, upper,
                LABEL["upper_body"], shade=0.3, pattern=pat)

    def arm(x_sh: float, x_hand: float, dim: float = 1.0) -> None:
        cut = 0.47 if a["sleeve"] == "long" else 0.27
        t = (cut - 0.17) / 0.33
        x_cut = x_sh + t * (x_hand - x_sh)
        cv.trap(Y(0.16), Y(cut), X(x_sh), 0.03 * s * b, X(x_cut), 0.024 * s * b, upper * dim,
                LABEL["upper_body"], shade=0.3, pattern=pat)
        cv.trap(Y(cut), Y(0.5), X(x_cut), 0.021 * s * b, X(x_hand), 0.018 * s * b, skin * dim,
                LABEL["upper_body"], shade=0.2)
        cv.ellipse(Y(0.51), X(x_hand), 0.022 * s, 0.02 * s, skin * dim, LABEL["upper_body"])

    def head_and_neck() -> None:
        cv.trap(Y(0.11), Y(0.17), X(0.0), 0.024 * s, X(0.0), 0.026 * s, skin * 0.92,
                LABEL["head"])
        cx_head = 0.01 * f if side else 0.0
        cv.ellipse(Y(0.075), X(cx_head), 0.068 * s, (0.046 if female else 0.05) * s, skin,
                   LABEL["head"], shade=0.15)
        if view.viewpoint == "front":  # eyes and mouth, so front and back differ
            for ex in (-0.018, 0.018):
                cv.ellipse(Y(0.07), X(ex), 0.007 * s, 0.007 * s, (40, 30, 30), LABEL["head"])
        elif side:
            cv.ellipse(Y(0.07), X(0.03 * f), 0.007 * s, 0.006 * s, (40, 30, 30), LABEL["head"])

    def hair_back_layer() -> None:  # long hair behind the head (front and side views)
        if a["hair"] != "long":
            return
        xc = -0.03 * f if side else 0.0
        cv.trap(Y(0.03), Y(0.27), X(xc), 0.058 * s, X(xc), 0.07 * s, hair, LABEL["hair"],
                shade=0.2)

    def hair_top() -> None:
        if view.viewpoint == "back":
            cv.ellipse(Y(0.072), X(0.0), 0.074 * s, 0.056 * s, hair, LABEL["hair"],
                       ymax=Y(0.14), shade=0.15)
            if a["hair"] == "long":
                cv.trap(Y(0.08), Y(0.28), X(0.0), 0.056 * s, X(0.0), 0.07 * s, hair,
                        LABEL["hair"], shade=0.2)
        else:
            cx_hair = -0.008 * f if side else 0.0
            cv.ellipse(Y(0.07), X(cx_hair), 0.074 * s, 0.055 * s, hair, LABEL["hair"],
                       ymax=Y(0.035), shade=0.15)
            if side:  # hair over the back of the head
                cv.ellipse(Y(0.07), X(-0.025 * f), 0.066 * s, 0.035 * s, hair, LABEL["hair"],
                           ymax=Y(0.11 if a["hair"] == "short" else 0.2))

    def hat() -> None:
        if a["hat"] != "yes":
            return
        colour = _colour(d.hat_colour)
        cv.ellipse(Y(0.04), X(0.0), 0.045 * s, 0.056 * s, colour, LABEL["hat"], ymax=Y(0.04),
                   shade=0.15)
        if side:
            cv.trap(Y(0.033), Y(0.048), X(0.035 * f), 0.07 * s, X(0.035 * f), 0.07 * s,
                    colour * 0.85, LABEL["hat"])
        else:
            cv.trap(Y(0.035), Y(0.05), X(0.0), 0.062 * s, X(0.0), 0.066 * s, colour * 0.85,
                    LABEL["hat"])

    def backpack() -> None:
        if a["backpack"] != "yes":
            return
        colour = _colour(d.backpack_colour)
        xc, hw = (-0.1 * f, 0.045) if side else (0.0, 0.072)
        cv.trap(Y(0.19), Y(0.44), X(xc), hw * s * b, X(xc), hw * 0.95 * s * b, colour,
                LABEL["backpack"], shade=0.3)
        if view.viewpoint == "back":
            cv.trap(Y(0.33), Y(0.42), X(0.0), 0.045 * s, X(0.0), 0.045 * s, colour * 0.8,
                    LABEL["backpack"])

    def bag() -> None:
        if a["bag"] != "yes":
            return
        colour = _colour(d.bag_colour)
        k = view.bag_side
        if side:
            cv.trap(Y(0.16), Y(0.41), X(0.0), 0.011 * s, X(0.01 * f), 0.011 * s, colour * 0.8,
                    LABEL["bag"])
            cv.trap(Y(0.4), Y(0.54), X(0.0), 0.05 * s, X(0.0), 0.052 * s, colour, LABEL["bag"],
                    shade=0.2)
        else:
            cv.trap(Y(0.16), Y(0.42), X(-k * 0.06 * b), 0.012 * s, X(k * 0.13 * b), 0.012 * s,
                    colour * 0.8, LABEL["bag"])
            cv.trap(Y(0.4), Y(0.54), X(k * 0.15 * b), 0.05 * s, X(k * 0.15 * b), 0.052 * s,
                    colour, LABEL["bag"], shade=0.2)

    hand_x = sh_hw + 0.02

    def handbag(x_hand: float) -> None:
        if a["handbag"] != "yes":
            return
        colour = _colour(d.handbag_colour)
        cv.trap(Y(0.49), Y(0.53), X(x_hand), 0.022 * s, X(x_hand), 0.026 * s, colour * 0.7,
                LABEL["handbag"])
        cv.trap(Y(0.525), Y(0.63), X(x_hand), 0.042 * s, X(x_hand), 0.05 * s, colour,
                LABEL["handbag"], shade=0.2)

    sw = view.arm_swing
    st = view.stride
    if side:
        swing = 2 * sw + 0.03 * f
        arm(0.0, -swing, far)
        leg(0.0, -f * st, far)
        backpack()
        leg(0.0, f * st)
        dress()
        torso()
        hair_back_layer()
        head_and_neck()
        hair_top()
        hat()
        bag()
        arm(0.0, swing)
        handbag(swing)
        return
    spread = 0.3 * st
    front = view.viewpoint == "front"
    if front:
        hair_back_layer()
        backpack()  # hidden behind the torso
    leg(-0.045 * b, -0.045 * b - spread)
    leg(0.045 * b, 0.045 * b + spread)
    dress()
    torso()
    arm(-(sh_hw - 0.012), -hand_x + sw)
    arm(sh_hw - 0.012, hand_x - sw)
    head_and_neck()
    hair_top()
    hat()
    if not front:
        backpack()
    bag()
    k = -view.bag_side if a["bag"] == "yes" else view.bag_side
    handbag(k * hand_x - k * sw)


def render(identity: Identity, camera: Camera, view: View, height: int = 128,
           width: int = 64) -> Rendered:
    """Render one image of ``identity`` seen by ``camera`` as described by ``view``."""
    cv = _Canvas(height, width)
    _background(cv, camera, view)
    _draw_person(cv, identity, view)
    return finish(cv, camera, view)


def finish(cv: _Canvas, camera: Camera, view: View,
           window: tuple[float, float, float, float] | None = None) -> Rendered:
    """The occluder in front, the camera's colour cast and sensor noise. ``window`` (top,
    left, height, width in canvas pixels; default the whole canvas) is the crop the view's
    occluder fractions refer to (a larger canvas holds the aligned crop at its centre)."""
    oy, ox, height, width = window or (0.0, 0.0, float(cv.h), float(cv.w))
    occ = view.occluder
    if occ is not None:
        y0, y1 = oy + occ.y0 * height, oy + occ.y1 * height
        x0, x1 = ox + occ.x0 * width, ox + occ.x1 * width
        cv.rect(y0, y1, x0, x1, occ.colour, 0)
        cv.rect(y0, y0 + max(1.0, 0.03 * height), x0, x1,
                tuple(int(v * 0.7) for v in occ.colour), 0)  # an edge, so it reads as an object
    noise = np.random.Generator(np.random.PCG64(view.noise_seed)).standard_normal(
        (cv.h, cv.w, 3), dtype=np.float32)
    img = cv.img * (np.asarray(camera.gains, np.float32) * view.brightness) + camera.offset
    img += noise * 4.0
    image = np.clip(img, 0, 255).astype(np.uint8)
    counts = np.bincount(cv.lab.ravel(), minlength=len(PARTS) + 1)
    return Rendered(image, cv.lab, view, {p: int(counts[LABEL[p]]) for p in PARTS})


def masks_from_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean stack (len(PARTS), H, W) from a label map; disjoint by construction."""
    return labels[None] == np.arange(1, len(PARTS) + 1, dtype=labels.dtype)[:, None, None]
