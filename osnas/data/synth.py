"""Built-in synthetic multi-domain person re-ID data (pure numpy drawing, deterministic).

Each domain is a set of distinct, person-like identities (body shape, clothing colours and
patterns, hair, bags, shoes) photographed by the domain's cameras. The gap *between*
domains is mainly style (colour cast, illumination, contrast/gamma, blur, noise, background
family): exactly what instance normalisation is meant to remove. Inside a domain every
camera adds a small style shift of its own. Identity is carried by clothing and shape.

Each domain is written in the Market-1501 layout (``bounding_box_train/``, ``query/``,
``bounding_box_test/``; names ``PPPP_cCsS_FFFFFF_NN.jpg``; 1-based ids and cameras; one
query per id per camera; distractors ``0000_...`` and junk ``-1_...`` in the gallery), so
it is read by the same parser as Market-1501.

Sizes: ``SynthParams`` (defaults for a CPU demo), or the environment variable
``OSNAS_SYNTH_PRESET`` = ``default`` | ``small`` | ``tiny`` for the CLI and auto-generation.

Families: ``synthK`` is the original, style-only family (kept pixel for pixel). Two harder
families live in `osnas.data.synth_families` and share this module's writing and caching:
``hardK`` (style gap plus textures, near-identical ids, pose, occlusion and camera
degradations: IN should help but is not enough) and ``geomK`` (no colour gap at all, only
blur / resolution / viewpoint / occlusion / framing: IN should not help). Every name
``synthK``, ``hardK``, ``geomK`` (K < 64) is a dataset name, generated on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osnas.errors import OsnasError

GENERATOR_VERSION = 1
MARKER = "osnas_synth.json"  # written last: a domain folder without it is incomplete
DEFAULT_NUM_DOMAINS = 4
MAX_DOMAINS = 64
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
_NAME_RE = re.compile(r"^synth(\d+)$")
FAMILY_NAMES = ("synth", "hard", "geom", "tex", "duo", "clear")  # synth: this module; the others: synth_families
# The other families' code registers itself here (osnas.data.synth_families, imported by the
# osnas.data package): family name -> module with get_spec, plan_domain, render_domain and
# preview_grid. This module draws synth and stores every family; it never imports them.
FAMILIES: dict = {}


def _family(name: str):
    if name not in FAMILIES:
        raise OsnasError(f"synthetic family {name!r}: unknown; expected one of {', '.join(FAMILY_NAMES)}")
    return FAMILIES[name]
_FAMILY_RE = re.compile(r"^(" + "|".join(FAMILY_NAMES) + r")(\d+)$")


@dataclass(frozen=True)
class SynthParams:
    train_ids: int = 100  # identities in bounding_box_train per domain
    test_ids: int = 60  # identities in query/bounding_box_test per domain
    min_images: int = 8  # images per identity (over its cameras)
    max_images: int = 12
    distractors: int = 20  # gallery images with id 0000 per domain
    junk: int = 10  # gallery images with id -1 per domain
    height: int = 128
    width: int = 64
    quality: int = 92  # JPEG quality
    seed: int = 0

    def validate(self) -> "SynthParams":
        if self.train_ids < 1 or self.test_ids < 1:
            raise OsnasError(f"synthetic data: train_ids and test_ids must be >= 1, got {self.train_ids}, {self.test_ids}")
        if self.min_images < 4 or self.max_images < self.min_images:
            raise OsnasError(
                f"synthetic data: need 4 <= min_images <= max_images, got {self.min_images}, {self.max_images}"
            )
        if self.train_ids + self.test_ids > 9000:
            raise OsnasError("synthetic data: at most 9000 identities per domain (4-digit ids)")
        if self.height < 32 or self.width < 16:
            raise OsnasError(f"synthetic data: image size {self.height}x{self.width} too small (min 32x16)")
        return self

    def hash(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRESETS = {
    "default": SynthParams(),
    "small": SynthParams(train_ids=24, test_ids=16, min_images=6, max_images=8, distractors=6, junk=3),
    "tiny": SynthParams(train_ids=4, test_ids=3, min_images=4, max_images=6, distractors=2, junk=2),
}


def params_from_env(family: str = "synth") -> SynthParams:
    """Preset named by $OSNAS_SYNTH_PRESET (default | small | tiny), else the defaults; each
    family has its own sizes for the same preset names (hard/geom: more test identities)."""
    name = os.environ.get("OSNAS_SYNTH_PRESET", "").strip() or "default"
    if name not in PRESETS:
        raise OsnasError(f"OSNAS_SYNTH_PRESET={name!r}: unknown preset; expected one of {', '.join(PRESETS)}")
    if family != "synth":
        return _family(family).get_spec(family).sizes[name]
    return PRESETS[name]


def domain_index(name: str) -> int | None:
    """'synth3' -> 3; anything else -> None."""
    m = _NAME_RE.match(str(name).strip().lower())
    if not m:
        return None
    k = int(m.group(1))
    return k if k < MAX_DOMAINS else None


def parse_domain(name) -> tuple[str, int] | None:
    """'hard3' -> ('hard', 3); 'synth0' -> ('synth', 0); not a synthetic name -> None.
    A synthetic name with an index >= MAX_DOMAINS is a one-line OsnasError."""
    m = _FAMILY_RE.match(str(name).strip().lower())
    if not m:
        return None
    fam, k = m.group(1), int(m.group(2))
    if k >= MAX_DOMAINS:
        raise OsnasError(f"synthetic domain {str(name).strip()!r}: index out of range; "
                         f"expected {fam}0 .. {fam}{MAX_DOMAINS - 1}")
    return fam, k


def domain_names(n: int = DEFAULT_NUM_DOMAINS, family: str = "synth") -> list[str]:
    return [f"{family}{k}" for k in range(n)]


def family_default_count(family: str) -> int:
    """How many domains a bare family name (`--domains hard`) stands for."""
    if family == "synth":
        return DEFAULT_NUM_DOMAINS
    return _family(family).get_spec(family).num_default


# ============================================================================ palettes
_CLOTH = np.array(
    [
        [0.80, 0.10, 0.10], [0.50, 0.05, 0.08], [0.95, 0.50, 0.10], [0.95, 0.85, 0.15],
        [0.15, 0.60, 0.20], [0.05, 0.30, 0.12], [0.10, 0.55, 0.55], [0.50, 0.75, 0.95],
        [0.10, 0.30, 0.80], [0.06, 0.10, 0.30], [0.45, 0.15, 0.60], [0.95, 0.55, 0.70],
        [0.95, 0.95, 0.93], [0.75, 0.75, 0.75], [0.45, 0.45, 0.47], [0.07, 0.07, 0.08],
        [0.40, 0.25, 0.12], [0.85, 0.75, 0.58], [0.60, 0.58, 0.35],
    ],
    np.float32,
)
# bottoms are mostly dark / denim / neutral
_BOTTOM_W = np.array([2, 1, .3, .2, .5, 1, .5, 1, 3, 4, .3, .3, 1, 2, 3, 5, 2, 2, 2], np.float64)
_SKIN = np.array(
    [[0.98, 0.84, 0.72], [0.93, 0.75, 0.60], [0.80, 0.60, 0.45], [0.62, 0.44, 0.30], [0.45, 0.30, 0.20]], np.float32
)
_HAIR = np.array(
    [[0.05, 0.04, 0.03], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15], [0.85, 0.72, 0.40], [0.60, 0.60, 0.60],
     [0.55, 0.20, 0.08]],
    np.float32,
)
_HAIR_W = np.array([6, 4, 2, 1, 1, 0.5])

# Hand-made styles for the first four domains so the built-in set spans clearly different
# "datasets"; further domains draw their style at random.
_BASE_STYLES = [
    dict(name="mall", cams=6, background="indoor", gain=(1.10, 1.00, 0.86), brightness=1.00, contrast=1.00,
         gamma=1.00, saturation=1.05, blur=0, noise=0.010, bg_colors=((0.80, 0.74, 0.62), (0.55, 0.45, 0.35))),
    dict(name="campus", cams=8, background="foliage", gain=(0.88, 1.00, 1.14), brightness=1.08, contrast=1.25,
         gamma=0.90, saturation=1.20, blur=0, noise=0.015, bg_colors=((0.20, 0.45, 0.18), (0.55, 0.70, 0.35))),
    dict(name="night", cams=4, background="wall", gain=(0.92, 1.10, 0.90), brightness=0.72, contrast=0.80,
         gamma=1.15, saturation=0.70, blur=2, noise=0.040, bg_colors=((0.55, 0.30, 0.22), (0.35, 0.33, 0.30))),
    dict(name="station", cams=5, background="street", gain=(1.08, 0.90, 1.08), brightness=1.22, contrast=0.75,
         gamma=0.80, saturation=0.60, blur=1, noise=0.020, bg_colors=((0.60, 0.62, 0.68), (0.35, 0.36, 0.40))),
]
_BG_FAMILIES = ("indoor", "foliage", "wall", "street", "gradient")


def domain_style(k: int, seed: int = 0) -> dict:
    """The style of domain k: camera count, colour cast, light, contrast, blur, noise, background."""
    if k < len(_BASE_STYLES):
        return dict(_BASE_STYLES[k])
    r = np.random.default_rng([seed, 7919, k])
    g = r.uniform(0.82, 1.18, 3)
    return dict(
        name=f"random{k}", cams=int(r.integers(3, 10)), background=str(r.choice(_BG_FAMILIES)),
        gain=tuple(float(v) for v in g / g.mean()), brightness=float(r.uniform(0.65, 1.25)),
        contrast=float(r.uniform(0.75, 1.3)), gamma=float(r.uniform(0.8, 1.25)),
        saturation=float(r.uniform(0.6, 1.25)), blur=int(r.integers(0, 3)), noise=float(r.uniform(0.005, 0.04)),
        bg_colors=(tuple(float(v) for v in r.uniform(0.2, 0.85, 3)), tuple(float(v) for v in r.uniform(0.15, 0.7, 3))),
    )


# ============================================================================ drawing helpers
def _value_noise(r: np.random.Generator, h: int, w: int, cy: int, cx: int) -> np.ndarray:
    """Smooth random field in [0, 1] with about cy x cx cells (bilinear, smoothstep)."""
    g = r.random((cy + 2, cx + 2)).astype(np.float32)
    ys = np.linspace(0, cy, h, dtype=np.float32)
    xs = np.linspace(0, cx, w, dtype=np.float32)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = ys - y0
    fx = xs - x0
    fy = (fy * fy * (3 - 2 * fy))[:, None]
    fx = (fx * fx * (3 - 2 * fx))[None, :]
    a = g[y0][:, x0]
    b = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _fbm(r, h, w, base=(2, 1), octaves=4):
    out = np.zeros((h, w), np.float32)
    amp, tot = 1.0, 0.0
    for o in range(octaves):
        out += amp * _value_noise(r, h, w, base[0] * 2**o, base[1] * 2**o)
        tot += amp
        amp *= 0.5
    return out / tot


def _mix(a, b, t):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _jit(r, c, s=0.06):
    return np.clip(np.asarray(c, np.float32) + r.normal(0, s, 3).astype(np.float32), 0.0, 1.0)


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    """[1, 2, 1] / 4 separable blur, `passes` times (approximately Gaussian)."""
    for _ in range(passes):
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) * 0.25
    return img


# ============================================================================ backgrounds
def _scene(r: np.random.Generator, family: str, colors, h: int, w: int) -> np.ndarray:
    """A camera's background scene (h x w x 3, floats in [0, 1])."""
    c1 = _jit(r, colors[0], 0.08)
    c2 = _jit(r, colors[1], 0.08)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = int(h * r.uniform(0.62, 0.80))
    if family == "wall":  # bricks above, pavement below
        bh = int(r.integers(5, 10))
        bw = int(r.integers(12, 22))
        row = (yy // bh).astype(np.int64)
        off = (row % 2) * (bw // 2)
        col = ((xx + off) // bw).astype(np.int64)
        tab = r.uniform(0.75, 1.15, (row.max() + 1, col.max() + 2)).astype(np.float32)
        img = c1[None, None] * tab[row, col][..., None]
        mortar = ((yy % bh) < 1) | (((xx + off) % bw) < 1)
        img = np.where(mortar[..., None], c1 * 0.55 + 0.25, img)
        floor = c2[None, None] * (0.8 + 0.3 * _fbm(r, h, w, (6, 3), 3))[..., None]
        img = np.where((yy >= horizon)[..., None], floor, img)
    elif family == "indoor":  # panels and doors, tiled floor
        img = np.broadcast_to(c1, (h, w, 3)).copy() * (0.9 + 0.15 * _fbm(r, h, w, (2, 2), 2))[..., None]
        for _ in range(int(r.integers(2, 5))):
            x0 = int(r.integers(-10, w))
            pw = int(r.integers(6, 24))
            y0 = int(r.integers(0, horizon // 2))
            m = (xx >= x0) & (xx < x0 + pw) & (yy >= y0) & (yy < horizon)
            img[m] = _jit(r, c2, 0.12)
        ty = int(r.integers(6, 12))
        tx = int(r.integers(8, 16))
        tile = ((((yy - horizon) // ty) + (xx // tx)) % 2).astype(np.float32)
        floor = c2[None, None] * 0.6 + 0.25 + 0.08 * tile[..., None]
        img = np.where((yy >= horizon)[..., None], floor, img)
    elif family == "foliage":  # leafy noise, a path at the bottom, sometimes sky
        n = _fbm(r, h, w, (3, 2), 4)
        n2 = _fbm(r, h, w, (8, 5), 2)
        img = _mix(c1 * 0.6, c2, np.clip(n * 1.6 - 0.3 + 0.3 * (n2 - 0.5), 0, 1))
        if r.random() < 0.5:
            sky = yy < h * r.uniform(0.08, 0.25) * (1 + n)
            img = np.where(sky[..., None], np.array([0.75, 0.82, 0.92], np.float32), img)
        path = np.array([0.55, 0.50, 0.42], np.float32) * (0.85 + 0.2 * n2)[..., None]
        img = np.where((yy >= horizon)[..., None], path, img)
    elif family == "street":  # facades with windows, road and lane line
        img = np.broadcast_to(c1, (h, w, 3)).copy()
        bx = int(r.integers(14, 30))
        bid = (xx // bx).astype(np.int64)
        tab = r.uniform(0.7, 1.2, (bid.max() + 1, 3)).astype(np.float32)
        img = img * tab[bid]
        wy, wx = int(r.integers(7, 12)), int(r.integers(5, 9))
        win = ((yy % wy) < wy * 0.5) & (((xx % bx) % wx) < wx * 0.55) & (yy < horizon - 4)
        img = np.where(win[..., None], c2 * 0.6, img)
        road = np.array([0.42, 0.42, 0.44], np.float32) * (0.9 + 0.15 * _fbm(r, h, w, (4, 2), 2))[..., None]
        img = np.where((yy >= horizon)[..., None], road, img)
        lane = (np.abs(yy - (horizon + (h - horizon) * 0.6)) < 1.0) & ((xx % 16) < 9)
        img = np.where(lane[..., None], np.array([0.9, 0.88, 0.7], np.float32), img)
    else:  # gradient: smooth vertical gradient with soft pillars
        t = (yy / h) ** r.uniform(0.6, 1.6)
        img = _mix(c1, c2, t)
        for _ in range(int(r.integers(1, 4))):
            x0 = r.uniform(0, w)
            pw = r.uniform(4, 14)
            soft = np.clip(1 - np.abs(xx - x0) / pw, 0, 1)
            img = img * (1 - 0.35 * soft[..., None]) + 0.35 * soft[..., None] * _jit(r, c2, 0.15)
    return np.clip(img, 0, 1).astype(np.float32)


# ============================================================================ people
_TOP_PATTERNS = ("solid", "solid", "hstripes", "vstripes", "checks", "logo", "twotone")
_BOTTOM_PATTERNS = ("solid", "solid", "solid", "sidestripe", "checks")


def _identity(r: np.random.Generator) -> dict:
    top = int(r.integers(len(_CLOTH)))
    top2 = int(r.choice([i for i in range(len(_CLOTH)) if i != top]))
    bottom = int(r.choice(len(_CLOTH), p=_BOTTOM_W / _BOTTOM_W.sum()))
    return dict(
        height=float(r.uniform(0.80, 0.94)),
        build=float(r.uniform(0.82, 1.22)),
        head=float(r.uniform(0.055, 0.070)),
        skin=_jit(r, _SKIN[r.integers(len(_SKIN))], 0.03),
        hair=_jit(r, _HAIR[r.choice(len(_HAIR), p=_HAIR_W / _HAIR_W.sum())], 0.03),
        long_hair=bool(r.random() < 0.3),
        hat=_jit(r, _CLOTH[r.integers(len(_CLOTH))], 0.04) if r.random() < 0.12 else None,
        top=_jit(r, _CLOTH[top], 0.05),
        top2=_jit(r, _CLOTH[top2], 0.05),
        top_pattern=str(r.choice(_TOP_PATTERNS)),
        period=float(r.uniform(0.03, 0.085)),
        logo=int(r.integers(3)),
        short_sleeves=bool(r.random() < 0.35),
        bottom=_jit(r, _CLOTH[bottom], 0.05),
        bottom2=_jit(r, _CLOTH[r.integers(len(_CLOTH))], 0.05),
        bottom_pattern=str(r.choice(_BOTTOM_PATTERNS)),
        lower=str(r.choice(["trousers"] * 6 + ["shorts"] * 2 + ["skirt"])),
        shoes=_jit(r, _CLOTH[r.choice([15, 12, 16, 14, 8, 0])], 0.04),
        bag=str(r.choice(["none", "none", "backpack", "shoulder", "hand"])),
        bag_color=_jit(r, _CLOTH[r.integers(len(_CLOTH))], 0.05),
        bag_side=int(r.choice([-1, 1])),
    )


def _person_box(cv, img: np.ndarray, ph: float, cx: float, y0: float, lean: float, half: float):
    """A float copy `full` of img and, inside the box of a person of height ph whose top is at
    y0 and centre at cx (half-width `half` x ph, widened by the lean): the view `out` of `full`
    there (drawing into it draws into `full`), its pixel grids yy, xx, and the body coordinates
    v (0 at the head, 1 at the feet) and u (across the body, the lean removed). `out` is None
    when the box lies outside the image."""
    full = np.array(img, np.float32, copy=True)
    half_w = (half + abs(lean) * 0.5) * ph
    ys = slice(max(0, int(y0) - 1), min(cv.h, int(y0 + ph) + 2))
    xs = slice(max(0, int(cx - half_w) - 1), min(cv.w, int(cx + half_w) + 2))
    yy, xx = cv.yy[ys, xs], cv.xx[ys, xs]
    if yy.size == 0:
        return full, None, yy, xx, None, None
    v = (yy - y0) / ph
    u = (xx - cx - lean * (yy - (y0 + 0.5 * ph))) / ph
    return full, full[ys, xs], yy, xx, v, u


class _Canvas:
    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)


class _Paint:
    """A person being drawn inside its bounding box: the crop (`out`), body coordinates (u
    across, v down, in person heights; yy, xx in pixels), what is drawn so far, the identity
    `p`, its build `b`, height `ph` in pixels, and whether it is seen from the back."""

    def __init__(self, out, yy, xx, v, u, p: dict, ph: float, back: bool):
        self.out, self.yy, self.xx, self.v, self.u = out, yy, xx, v, u
        self.p, self.b, self.ph, self.back = p, p["build"], ph, back
        self.drawn = np.zeros(out.shape[:2], bool)
        self.hv, self.hr = 0.085, p["head"]
        self.sw, self.hw = 0.125 * self.b, 0.105 * self.b  # shoulder / hip half widths

    def put(self, mask, color):
        if np.ndim(color) == 1:
            self.out[mask] = color
        else:
            self.out[mask] = color[mask]
        self.drawn[mask] = True


def _legs(d: _Paint, stride: float) -> None:
    """Legs, trousers / shorts / skirt with their pattern, shoes (drawn first: the torso covers the hips)."""
    p, u, v, b, put = d.p, d.u, d.v, d.b, d.put
    H, W = d.out.shape[:2]
    legs = np.zeros((H, W), bool)
    leg_x = []
    for s in (-1, 1):
        lx = s * 0.052 * b + s * stride * np.clip(v - 0.52, 0, None)
        half = 0.048 * b - 0.01 * np.clip(v - 0.52, 0, 0.45)
        m = (np.abs(u - lx) < half) & (v >= 0.50) & (v < 0.95)
        legs |= m
        leg_x.append(lx)
    lower_cut = {"trousers": 0.95, "shorts": 0.70, "skirt": 0.50}[p["lower"]]
    put(legs & (v >= lower_cut), p["skin"])
    cloth = legs & (v < lower_cut)
    bcol = np.broadcast_to(p["bottom"], (H, W, 3))
    if p["bottom_pattern"] == "sidestripe":
        edge = np.zeros((H, W), bool)
        for lx in leg_x:
            edge |= np.abs(np.abs(u - lx) - 0.036 * b) < 0.009
        bcol = np.where(edge[..., None], p["bottom2"], bcol)
    elif p["bottom_pattern"] == "checks":
        per = p["period"] * 1.2 * d.ph
        chk = ((np.floor(d.xx / per) + np.floor(d.yy / per)) % 2).astype(bool)
        bcol = np.where(chk[..., None], p["bottom"] * 0.65, bcol)
    put(cloth, bcol)
    if p["lower"] == "skirt":
        half = 0.105 * b + 0.12 * np.clip(v - 0.50, 0, None)
        put((np.abs(u) < half) & (v >= 0.48) & (v < 0.72), bcol)
    for lx in leg_x:
        put((np.abs(u - lx - 0.008) < 0.048 * b) & (v >= 0.94) & (v < 0.99), p["shoes"])


def _arms(d: _Paint, swing: float) -> None:
    """Arms, behind or beside the torso: sleeves, then skin, then hands."""
    p, u, v, b, put = d.p, d.u, d.v, d.b, d.put
    for s in (-1, 1):
        ax = s * (d.sw + 0.03 * b) + s * swing * np.clip(v - 0.17, 0, None) * 0.5
        arm = (np.abs(u - ax) < 0.033 * b) & (v >= 0.17) & (v < 0.50)
        sleeve = 0.27 if p["short_sleeves"] else 0.50
        put(arm & (v < sleeve), p["top"])
        put(arm & (v >= sleeve), p["skin"])
        put((np.abs(u - ax) < 0.03 * b) & (v >= 0.50) & (v < 0.55), p["skin"])


def _torso(d: _Paint) -> None:
    """The torso with the top's pattern (stripes, checks, two tones, a logo on the front)."""
    p, u, v, put = d.p, d.u, d.v, d.put
    H, W = d.out.shape[:2]
    half = d.sw + (d.hw - d.sw) * np.clip((v - 0.16) / 0.36, 0, 1)
    torso = (np.abs(u) < half) & (v >= 0.16) & (v < 0.52)
    tpat = p["top_pattern"]
    tcol = np.broadcast_to(p["top"], (H, W, 3))
    per = p["period"] * d.ph
    tu, tv = u * d.ph, (v - 0.16) * d.ph
    if tpat == "hstripes":
        tcol = np.where(((np.floor(tv / per) % 2) == 1)[..., None], p["top2"], tcol)
    elif tpat == "vstripes":
        tcol = np.where(((np.floor((tu + 1000) / per) % 2) == 1)[..., None], p["top2"], tcol)
    elif tpat == "checks":
        chk = ((np.floor(tv / per) + np.floor((tu + 1000) / per)) % 2) == 1
        tcol = np.where(chk[..., None], p["top2"], tcol)
    elif tpat == "twotone":
        tcol = np.where((v >= 0.34)[..., None], p["top2"], tcol)
    elif tpat == "logo" and not d.back:
        du, dv = u / 0.06, (v - 0.29) / 0.06
        shape = [du**2 + dv**2 < 1, (np.abs(du) < 0.9) & (np.abs(dv) < 0.9), np.abs(du) + np.abs(dv) < 1.1][p["logo"]]
        tcol = np.where(shape[..., None], p["top2"], tcol)
    put(torso, tcol)


def _head(d: _Paint) -> None:
    """Neck, head, hair and hat."""
    p, u, v, put, hv, hr, back = d.p, d.u, d.v, d.put, d.hv, d.hr, d.back
    put((np.abs(u) < 0.028) & (v >= hv + hr * 0.6) & (v < 0.17), p["skin"])
    head = (u / (hr * 0.85)) ** 2 + ((v - hv) / hr) ** 2 < 1
    if p["long_hair"]:  # at the back it covers the neck; from the front only the sides show
        inner = 0.0 if back else hr * 0.75
        put((np.abs(u) < hr * 1.05) & (np.abs(u) >= inner) & (v >= hv) & (v < 0.23), p["hair"])
    put(head, p["hair"] if back else p["skin"])
    if not back:
        put(head & (v < hv - hr * 0.35), p["hair"])
    if p["hat"] is not None:
        put((u / (hr * 1.0)) ** 2 + ((v - hv + hr * 0.45) / (hr * 0.65)) ** 2 < 1, p["hat"])
        put((np.abs(u + (0 if back else 0.25 * hr)) < hr * 1.2) & (np.abs(v - hv + hr * 0.2) < 0.008), p["hat"])


def _bags(d: _Paint) -> None:
    """A backpack (straps from the front), a shoulder bag or a hand bag."""
    p, u, v, b, put, sw = d.p, d.u, d.v, d.b, d.put, d.sw
    if p["bag"] == "backpack":
        if d.back:
            put((np.abs(u) < 0.10 * b) & (v >= 0.19) & (v < 0.43), p["bag_color"])
            put((np.abs(u) < 0.07 * b) & (v >= 0.31) & (v < 0.40), p["bag_color"] * 0.7)
        else:
            for s in (-1, 1):
                put((np.abs(u - s * 0.075 * b) < 0.014) & (v >= 0.16) & (v < 0.36), p["bag_color"])
    elif p["bag"] == "shoulder":
        s = p["bag_side"]
        put((np.abs(u - s * 0.17 * b) < 0.055 * b) & (v >= 0.40) & (v < 0.54), p["bag_color"])
        line = np.abs((u + s * 0.10 * b) - s * 0.9 * (v - 0.16)) < 0.013
        put(line & (v >= 0.16) & (v < 0.42) & (np.abs(u) < sw), p["bag_color"])
    elif p["bag"] == "hand":
        s = p["bag_side"]
        put((np.abs(u - s * (sw + 0.05 * b)) < 0.045) & (v >= 0.52) & (v < 0.64), p["bag_color"])


def _draw_person(cv: _Canvas, img: np.ndarray, p: dict, r: np.random.Generator, scale: float = 1.0,
                 partial: bool = False) -> np.ndarray:
    """Draw identity `p` onto `img` (in place and returned) with a random pose."""
    H, W = cv.h, cv.w
    ph = min(H * p["height"] * scale * (1 + r.normal(0, 0.035)), H * 0.99)
    cx = W / 2 + r.normal(0, W * 0.04) + (r.uniform(-0.3, 0.3) * W if partial else 0)
    y0 = (H - ph) / 2 + r.normal(0, H * 0.02)
    lean = r.normal(0, 0.05)
    stride = r.uniform(0.0, 0.13)
    swing = r.normal(0, 0.08)
    back = r.random() < 0.5
    # work inside the person's bounding box only (everything drawn lies within |u| < 0.35)
    full, out, yy, xx, v, u = _person_box(cv, img, ph, cx, y0, lean, 0.35)
    if out is None:
        return full
    d = _Paint(out, yy, xx, v, u, p, ph, back)
    _legs(d, stride)
    _arms(d, swing)
    _torso(d)
    _head(d)
    _bags(d)
    # cylinder shading on the person only
    shade = 1.0 - 0.30 * np.clip((u / (0.2 * d.b)) ** 2, 0, 1) + 0.06 * (0.5 - np.clip(v, 0, 1))
    out[d.drawn] *= shade[d.drawn][:, None]
    return full


def _occlude(cv: _Canvas, img: np.ndarray, r: np.random.Generator) -> np.ndarray:
    H, W = cv.h, cv.w
    col = _jit(r, _CLOTH[r.integers(len(_CLOTH))], 0.1)
    tex = (0.85 + 0.3 * _fbm(r, H, W, (3, 2), 2))[..., None]
    if r.random() < 0.6:  # something in front of the legs (bench, car, luggage)
        y0 = H * r.uniform(0.62, 0.85)
        x0, x1 = sorted(r.uniform(-0.2, 1.2, 2) * W)
        if x1 - x0 < W * 0.4:
            x1 = x0 + W * 0.6
        m = (cv.yy >= y0) & (cv.xx >= x0) & (cv.xx < x1)
    else:  # a pole / another pedestrian at the side
        wdt = W * r.uniform(0.18, 0.40)
        m = cv.xx < wdt if r.random() < 0.5 else cv.xx >= W - wdt
    return np.where(m[..., None], col * tex, img)


# ============================================================================ style
def _camera_style(r: np.random.Generator, style: dict, h: int, w: int) -> dict:
    pad_h, pad_w = max(8, h // 6), max(8, w // 4)
    scene = _scene(r, style["background"], style["bg_colors"], h + pad_h, w + pad_w)
    gain = np.asarray(style["gain"], np.float32) * r.uniform(0.93, 1.07, 3).astype(np.float32)
    brightness = style["brightness"] * r.uniform(0.90, 1.10)
    grad = r.normal(0, 0.12, 2)  # illumination gradient (y, x)
    scale = r.uniform(0.93, 1.05)
    contrast = style["contrast"] * r.uniform(0.95, 1.05)
    # colour cast, saturation and contrast as one affine map per pixel: x -> M x + bias
    s = style["saturation"]
    sat = s * np.eye(3) + (1 - s) / 3.0 * np.ones((3, 3))
    M = (contrast * sat @ np.diag(gain)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = (brightness * (1 + grad[0] * (yy / h - 0.5) + grad[1] * (xx / w - 0.5))).astype(np.float32)
    return dict(scene=scene, scale=scale, MT=np.ascontiguousarray(M.T), bias=np.float32(0.5 * (1 - contrast)),
                light=light[..., None])


def _stylise(img: np.ndarray, cam: dict, style: dict, r: np.random.Generator, cv: _Canvas) -> np.ndarray:
    img = img @ cam["MT"] + cam["bias"]
    img *= cam["light"] * np.float32(r.uniform(0.94, 1.06))
    np.clip(img, 0, 1, out=img)
    if abs(style["gamma"] - 1.0) > 1e-6:
        img = np.power(img, np.float32(style["gamma"]), dtype=np.float32)
    if style["blur"]:
        img = _blur(img, int(style["blur"]))
    img += r.standard_normal(img.shape, dtype=np.float32) * np.float32(style["noise"])
    return np.clip(img, 0, 1, out=img)


def _scene_crop(cv: _Canvas, cam: dict, r: np.random.Generator) -> np.ndarray:
    """A random HxW window of the camera's (larger) background scene, its light jittered."""
    sc = cam["scene"]
    oy = int(r.integers(0, sc.shape[0] - cv.h + 1))
    ox = int(r.integers(0, sc.shape[1] - cv.w + 1))
    return sc[oy:oy + cv.h, ox:ox + cv.w] * np.float32(r.uniform(0.95, 1.05))


def _render(cv: _Canvas, person: dict | None, cam: dict, style: dict, r: np.random.Generator,
            occlude_p: float = 0.15, partial: bool = False) -> np.ndarray:
    img = _scene_crop(cv, cam, r)
    if person is not None:
        img = _draw_person(cv, img, person, r, scale=cam["scale"], partial=partial)
        if r.random() < occlude_p:
            img = _occlude(cv, img, r)
    img = _stylise(img, cam, style, r, cv)
    return (img * 255.0 + 0.5).astype(np.uint8)


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ============================================================================ one domain
def _split_counts(r, n: int, k: int, minimum: int) -> list[int]:
    counts = [minimum] * k
    for _ in range(n - minimum * k):
        counts[int(r.integers(k))] += 1
    return counts


def plan_domain(k: int, params: SynthParams, family: str = "synth") -> dict:
    """Identities, cameras and file names of domain k (no pixels yet). Deterministic."""
    if family != "synth":
        return _family(family).plan_domain(family, k, params)
    style = domain_style(k, params.seed)
    plan = _plan_files(k, params, style["cams"], np.random.default_rng([params.seed, 101, k]))
    plan["style"] = style
    return plan


def _plan_files(k: int, params: SynthParams, C: int, r: np.random.Generator) -> dict:
    """Train / test ids and the file list of a domain with C cameras, drawn from `r`."""
    n_ids = params.train_ids + params.test_ids
    ids = np.sort(r.choice(np.arange(1, min(9999, max(3 * n_ids, 1500)) + 1), n_ids, replace=False))
    perm = r.permutation(n_ids)
    train_ids = sorted(int(i) for i in ids[perm[: params.train_ids]])
    test_ids = sorted(int(i) for i in ids[perm[params.train_ids:]])
    used: set = set()
    files = []  # (split, file name, pid, cam (1-based), kind)

    def name(pid: int, cam: int) -> str:
        while True:
            seq = int(r.integers(1, 7))
            frame = int(r.integers(0, 200000))
            nn = int(r.integers(1, 9))
            pstr = "-1" if pid == -1 else f"{pid:04d}"
            nm = f"{pstr}_c{cam}s{seq}_{frame:06d}_{nn:02d}.jpg"
            if nm not in used:
                used.add(nm)
                return nm

    for pid in train_ids:
        n = int(r.integers(params.min_images, params.max_images + 1))
        kc = int(r.integers(2, min(C, 4, n) + 1))
        cams = sorted(int(c) + 1 for c in r.choice(C, kc, replace=False))
        for cam, cnt in zip(cams, _split_counts(r, n, kc, 1)):
            for _ in range(cnt):
                files.append(("bounding_box_train", name(pid, cam), pid, cam, "person"))
    for pid in test_ids:
        n = int(r.integers(params.min_images, params.max_images + 1))
        kc = int(r.integers(2, max(2, min(C, 4, n // 2)) + 1))
        cams = sorted(int(c) + 1 for c in r.choice(C, kc, replace=False))
        for cam, cnt in zip(cams, _split_counts(r, max(n, 2 * kc), kc, 2)):
            q = int(r.integers(cnt))  # one query per id per camera, the rest in the gallery
            for j in range(cnt):
                files.append(("query" if j == q else "bounding_box_test", name(pid, cam), pid, cam, "person"))
    for _ in range(params.distractors):
        cam = int(r.integers(1, C + 1))
        files.append(("bounding_box_test", name(0, cam), 0, cam, "distractor"))
    for _ in range(params.junk):
        cam = int(r.integers(1, C + 1))
        files.append(("bounding_box_test", name(-1, cam), -1, cam, "junk"))
    return dict(index=k, cams=C, train_ids=train_ids, test_ids=test_ids, files=files)


def render_domain(plan: dict, params: SynthParams, progress=None):
    """Yield (split, file name, jpeg bytes) for every file of a planned domain."""
    if plan.get("family", "synth") != "synth":
        yield from _family(plan["family"]).render_domain(plan, params, progress)
        return
    k, style = plan["index"], plan["style"]
    H, W = params.height, params.width
    cv = _Canvas(H, W)
    cams = [_camera_style(np.random.default_rng([params.seed, 202, k, c]), style, H, W) for c in range(plan["cams"])]
    people = {}
    for pid in plan["train_ids"] + plan["test_ids"]:
        people[pid] = _identity(np.random.default_rng([params.seed, 303, k, pid]))
    r = np.random.default_rng([params.seed, 404, k])
    for split, fname, pid, cam, kind in plan["files"]:
        cs = cams[cam - 1]
        if kind == "person":
            arr = _render(cv, people[pid], cs, style, r)
        elif kind == "distractor":  # somebody else, badly framed
            arr = _render(cv, _identity(r), cs, style, r, occlude_p=0.5, partial=True)
        else:  # junk: background only, or a fragment of somebody
            arr = _render(cv, _identity(r) if r.random() < 0.5 else None, cs, style, r, occlude_p=1.0, partial=True)
        yield split, fname, _jpeg(arr, params.quality)
        if progress is not None:
            progress.update(1)


def preview_grid(k: int, params: SynthParams, n_ids: int = 6, family: str = "synth") -> np.ndarray:
    """A (n_ids x cameras) grid of training identities of domain k, each seen by every camera."""
    if family != "synth":
        return _family(family).preview_grid(family, k, params, n_ids)
    plan = plan_domain(k, params)
    style = plan["style"]
    H, W = params.height, params.width
    cv = _Canvas(H, W)
    cams = [_camera_style(np.random.default_rng([params.seed, 202, k, c]), style, H, W) for c in range(plan["cams"])]
    pids = plan["train_ids"][:n_ids]
    r = np.random.default_rng([params.seed, 505, k])
    gap = 2
    grid = np.full((len(pids) * (H + gap) - gap, len(cams) * (W + gap) - gap, 3), 255, np.uint8)
    for i, pid in enumerate(pids):
        person = _identity(np.random.default_rng([params.seed, 303, k, pid]))
        for j, cs in enumerate(cams):
            grid[i * (H + gap): i * (H + gap) + H, j * (W + gap): j * (W + gap) + W] = _render(
                cv, person, cs, style, r, occlude_p=0.0
            )
    return grid


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ============================================================================ writing
def read_marker(folder: str | Path) -> dict | None:
    p = Path(folder) / MARKER
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: str | Path, params: SynthParams | None = None) -> bool:
    """A domain folder is complete when its marker exists (and matches `params` when given)."""
    m = read_marker(folder)
    if not m or m.get("version") != GENERATOR_VERSION:
        return False
    fam = m.get("family", "synth")
    if fam != "synth":
        spec = FAMILIES[fam].get_spec(fam) if fam in FAMILIES else None
        k = m.get("domain")
        if spec is None or m.get("family_version") != spec.version or not (isinstance(k, int) and 0 <= k < MAX_DOMAINS):
            return False
        if params is not None and m.get("params_hash") != spec.params_hash(params, k):
            return False
    elif params is not None and m.get("params_hash") != params.hash():
        return False
    return all((Path(folder) / s).is_dir() for s in SPLITS)


@contextmanager
def _lock(path: Path):
    """Exclusive lock (several processes, e.g. DDP ranks, may ask for the same domain)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_domain(out: str | Path, k: int, params: SynthParams, progress=None, family: str = "synth") -> Path:
    """Write domain k of `family` to OUT/<family>K atomically (temp folder, marker last, rename)."""
    out = Path(out)
    name = f"{family}{k}"
    final = out / name
    plan = plan_domain(k, params, family)
    tmp = out / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for s in SPLITS:
            (tmp / s).mkdir(parents=True, exist_ok=True)
        for split, fname, data in render_domain(plan, params, progress):
            (tmp / split / fname).write_bytes(data)
        (tmp / "preview.png").write_bytes(_png(preview_grid(k, params, family=family)))
        counts = {s: sum(1 for f in plan["files"] if f[0] == s) for s in SPLITS}
        marker = dict(
            version=GENERATOR_VERSION, params_hash=params.hash(), params=dataclasses.asdict(params),
            domain=k, style={kk: vv for kk, vv in plan["style"].items()}, cameras=plan["cams"],
            train_ids=len(plan["train_ids"]), test_ids=len(plan["test_ids"]), images=counts,
        )
        if family != "synth":
            marker.update(_family(family).marker_extra(plan, params))
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OsnasError(f"{final}: cannot write synthetic domain ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


_DOMAINS_HELP = (f"a number of synth domains (1..{MAX_DOMAINS}), domain names synthK / hardK / geomK "
                 f"(K < {MAX_DOMAINS}), a family name ({', '.join(FAMILY_NAMES)}: its built-in domains) or "
                 f"FAMILY:N (its first N), comma-separated")


def _domain_list(domains) -> list[tuple[str, int]]:
    """Normalise a domain selection to [(family, k), ...] (see _DOMAINS_HELP)."""
    if domains is None:
        return [("synth", k) for k in range(DEFAULT_NUM_DOMAINS)]
    if isinstance(domains, str):
        txt = domains.strip()
        domains = int(txt) if txt.isdigit() else [d for d in txt.replace(" ", ",").split(",") if d]
        if not domains:
            raise OsnasError(f"--domains {txt!r}: empty; expected {_DOMAINS_HELP}")
    if isinstance(domains, int) and not isinstance(domains, bool):
        if not 1 <= domains <= MAX_DOMAINS:
            raise OsnasError(f"--domains {domains}: expected a number of domains between 1 and {MAX_DOMAINS}")
        return [("synth", k) for k in range(domains)]
    out: list[tuple[str, int]] = []
    for d in domains:
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            if not 0 <= int(d) < MAX_DOMAINS:
                raise OsnasError(f"synthetic domain {d!r}: expected synth0 .. synth{MAX_DOMAINS - 1}")
            out.append(("synth", int(d)))
            continue
        txt = str(d).strip().lower()
        fam, _, n = txt.partition(":")
        if fam in FAMILY_NAMES:
            if n and not (n.isdigit() and 1 <= int(n) <= MAX_DOMAINS):
                raise OsnasError(f"synthetic domains {d!r}: expected {fam}:N with N in 1..{MAX_DOMAINS}")
            out += [(fam, k) for k in range(int(n) if n else family_default_count(fam))]
            continue
        pk = parse_domain(txt)
        if pk is None:
            raise OsnasError(f"synthetic domain {d!r}: unknown; expected {_DOMAINS_HELP}")
        out.append(pk)
    return out


def _generate(out: Path, ks: list[tuple[str, int]], params: SynthParams | None, force: bool, exact: bool,
              verbose: bool) -> list[Path]:
    """Write the missing (family, k) domains under OUT; params None: each family's preset."""
    from osnas.utils import Progress

    def par(fam):
        return (params or params_from_env(fam)).validate()

    todo = [(f, k) for f, k in ks if force or not is_complete(out / f"{f}{k}", par(f) if exact else None)]
    paths = [out / f"{f}{k}" for f, k in ks]
    if not todo:
        return paths
    total = sum(len(plan_domain(k, par(f), f)["files"]) for f, k in todo)
    with Progress(total, "synth", unit="img", enabled=verbose) as prog:
        for f, k in todo:
            name = f"{f}{k}"
            with _lock(out / f".{name}.lock"):
                if not force and is_complete(out / name, par(f) if exact else None):
                    continue  # another process wrote it meanwhile
                for stale in out.glob(f".{name}.partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                write_domain(out, k, par(f), prog, family=f)
    return paths


def run_synth(out, domains=None, force: bool = False, params: SynthParams | None = None) -> list[Path]:
    """`osnas data synth`: write synthetic domains under OUT in the Market-1501 layout.

    domains: None (synth0..synth3), a count N (synth0..synth{N-1}), or names / families, e.g.
    ["hard0", "geom2"], "hard" (its built-in domains), "geom:6", "synth0,hard4" (see _DOMAINS_HELP).
    params: the sizes for every domain; None: $OSNAS_SYNTH_PRESET of each family.
    Complete domains with the same generator version and parameters are kept unless `force`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OsnasError(f"{out}: exists and is not a folder; expected an output folder for synthetic data")
    ks = _domain_list(domains)
    if params is not None:
        params.validate()
    paths = _generate(out, ks, params, force, exact=True, verbose=True)
    for (f, k), p in zip(ks, paths):
        m = read_marker(p) or {}
        im = m.get("images", {})
        print(
            f"{f}{k}: {p}  ({m.get('train_ids', '?')} train ids, {m.get('test_ids', '?')} test ids, "
            f"{m.get('cameras', '?')} cameras, {im.get('bounding_box_train', '?')}/{im.get('query', '?')}/"
            f"{im.get('bounding_box_test', '?')} train/query/gallery images)"
        )
    print(f"wrote {len(ks)} synthetic domain(s) to {out}")
    return paths


def ensure_synth(root, names, params: SynthParams | None = None) -> list[Path]:
    """Make sure ROOT/synth/<name> exists for each synthetic name (synthK, hardK, geomK);
    generate missing ones (stderr note).

    An existing complete domain (any parameters of this generator version) is used as it is.
    """
    base = Path(root) / "synth"
    ks = _domain_list([names] if isinstance(names, str) else list(names))
    missing = [(f, k) for f, k in ks if not is_complete(base / f"{f}{k}")]
    if missing:
        print(
            f"osnas: generating synthetic domain(s) {', '.join(f'{f}{k}' for f, k in missing)} into {base} "
            f"(first use; cached for later runs)",
            file=sys.stderr,
            flush=True,
        )
        _generate(base, missing, params, force=False, exact=False, verbose=True)
    return [base / f"{f}{k}" for f, k in ks]
