"""Synthetic domain families next to synth0..N: hard, geom, and the held-out tex, duo and clear.

Why: on ``synth0..N`` identity is learned quickly inside a domain and the gap between domains
is mostly colour (cast, light, contrast, gamma) -- exactly what instance normalisation (IN)
removes, so a search over IN placements there can only ever answer "IN everywhere". Real
camera networks also differ in things IN cannot undo (blur, resolution, noise, viewpoint,
occlusion, framing). The two families below let the data decide:

``hard`` (`HARD`) -- a varied, hard STYLE family: IN should help, but it is not enough.
    Everything synth has (per-domain colour cast, light, contrast, gamma, saturation, per-camera
    colour shift, background families) plus near-identical identities (groups that share
    clothes and differ in one accessory or detail), clothing textures at different scales
    (stripes, checks, plaid, dots, prints), pose and viewpoint (front / back / side, arm and
    leg positions, scale and position jitter), occlusion (objects, poles, other pedestrians)
    and partial crops (head or legs cut), and camera degradations: low light with Poisson
    shot noise, read noise and colour (chroma) noise, motion / defocus blur, low resolution
    (down-sampled then up-sampled) and strong JPEG compression. Degradation strength varies
    per domain and per camera; ``hard4`` ("night": very dark, noisy, 4x low resolution,
    JPEG quality 10-25) is meant to sit near the floor for a plain model.

``geom`` (`GEOM`) -- a GEOMETRY family where IN should NOT help. All domains and cameras share
    one colour pipeline (no cast, no illumination, contrast, gamma or saturation change, the
    same background colour distribution, the same sensor noise and JPEG quality); identity is
    carried by the ABSOLUTE colour and brightness of mostly plain clothing (continuous HSV
    colours; near-identical identities differ only in how light or dark a garment is, which
    per-image channel normalisation partly removes) plus body shape and accessories. The
    domain shift is only in what IN cannot remove: blur, resolution, viewpoint / pose
    distribution, occlusion and crop framing.

``tex``, ``duo`` and ``clear`` -- three families written for the pre-registered test of the
    search (experiments/preregistered/PLAN.md) and never used to develop it: ``tex`` keeps
    identity in absolute colour under one colour pipeline and shifts the domains' mid-level
    texture (a periodic overlay, `overlay`); ``duo`` mixes colour, light and moderate blur and
    resolution shifts for a two-source shape; ``clear`` has distinct people and clean cameras,
    its domains differing in colour cast, light and contrast (a larger signal).

Everything is deterministic from (family, domain index, ``SynthParams.seed``); a family's
knobs live in its `FamilySpec` (data, not scattered constants): the hand-made domain profiles
(``builtin``), the ranges random domains (index >= len(builtin)) are drawn from (``random``),
the identity model and the default sizes (``sizes``: default / small / tiny). Bump a spec's
``version`` when its pixels change (cached domains of the old version are regenerated).

The writing, caching and Market-1501 layout are shared with synth (`osnas.data.synth`):
``run_synth(out, domains=["hard0", "geom2"])``, ``ensure_synth(root, ["hard3"])``, and any
dataset name ``hardK`` / ``geomK`` (``osnas data info hard2``, ``--sources hard0,hard1``).
"""

from __future__ import annotations

import dataclasses
import sys
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from osnas.data import synth as S
from osnas.data.synth import SynthParams
from osnas.errors import OsnasError


# ============================================================================ family specs
@dataclass(frozen=True)
class FamilySpec:
    """The data that defines one family of synthetic domains (see the module docstring)."""

    name: str  # domain names are f"{name}{k}"
    tag: int  # random-stream namespace: streams are seeded [seed, tag, purpose, k, ...]
    version: int  # bump when this family's pixels change
    purpose: str  # one line: what the family is for
    builtin: tuple  # hand-made domain profiles (dicts) for k < len(builtin)
    base: dict  # defaults of every profile key (a profile overrides them)
    random: dict  # ranges of random profiles (k >= len(builtin)): key -> (lo, hi) or choices
    style_colour: bool  # False: every domain / camera shares the colour pipeline of `base`
    cam_colour_jitter: float  # per-camera colour gain jitter (0 when style_colour is False)
    palette: str  # "cloth": the synth named-colour palette | "continuous": HSV, any brightness
    top_patterns: tuple  # ((pattern, weight), ...)
    bottom_patterns: tuple
    period: tuple  # texture period range, as a fraction of the person's height
    sibling_frac: float  # fraction of identities that belong to a near-identical group
    max_group: int  # near-identical group size 2..max_group
    sibling_edits: tuple  # the one detail a sibling changes (one drawn per sibling)
    sizes: dict = field(default_factory=dict)  # preset name -> SynthParams

    @property
    def num_default(self) -> int:
        """How many domains `--domains FAMILY` writes (the hand-made ones)."""
        return len(self.builtin)

    def params_hash(self, params: SynthParams, k: int) -> str:
        """What domain k's pixels depend on: the generator and family versions, the family's
        identity model, the domain's profile and the sizes (adding a domain keeps the others)."""
        d = {key: v for key, v in dataclasses.asdict(self).items() if key not in ("sizes", "builtin", "random")}
        blob = json.dumps(
            {"version": S.GENERATOR_VERSION, "family": self.name, "spec": d,
             "profile": _json_ready(domain_profile(self.name, k, params.seed)), **dataclasses.asdict(params)},
            sort_keys=True, default=list,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_COLOUR_KEYS = ("gain", "brightness", "contrast", "gamma", "saturation", "bg_colors")

# sizes: more test identities than synth so that a held-out domain's rank-1 / mAP is not noise
_SIZES = {
    "default": SynthParams(train_ids=150, test_ids=200, min_images=8, max_images=12, distractors=100, junk=20),
    "small": SynthParams(train_ids=40, test_ids=40, min_images=6, max_images=8, distractors=10, junk=4),
    "tiny": SynthParams(train_ids=4, test_ids=3, min_images=4, max_images=6, distractors=2, junk=2),
}

_HARD_BASE = dict(
    name="", cams=6, backgrounds=("indoor", "foliage", "wall", "street", "gradient"), bg_colors=None,
    gain=(1.0, 1.0, 1.0), brightness=1.0, contrast=1.0, gamma=1.0, saturation=1.0,
    light=(0.9, 1.1),  # exposure per camera (1 = normal day; low light < 0.2)
    max_gain=8.0,  # the camera's auto-gain brings exposure back up by at most this factor
    well=1500.0,  # photons at white for exposure 1 (Poisson shot noise ~ 1/sqrt(well * exposure))
    read_noise=0.006,  # Gaussian sensor read noise (before the gain)
    chroma=0.0,  # low-frequency colour noise amplitude (after the gain)
    blur_kind="none", blur=(0.0, 0.0),  # none | defocus (disk radius px) | motion (length px) | mixed
    lowres=(1.0, 1.0),  # sensor down-sampling factor (then up-sampled back to HxW)
    jpeg=(85, 95),  # JPEG quality per camera
    views=(0.4, 0.4, 0.2),  # front, back, side weights (each camera skews them)
    scale=(0.78, 0.92),  # person height / image height (camera centre)
    shift=0.05,  # horizontal position jitter, fraction of the width
    cut=(0.05, 0.05),  # probability of a crop cutting the head / the legs
    occlude=0.15, occluders=(1.0, 1.0, 1.0),  # probability; weights of object, pole, pedestrian
    arms=(0.6, 0.25, 0.15),  # arms down / swinging wide / one arm raised (phone)
)

HARD = FamilySpec(
    name="hard", tag=7001, version=1,
    purpose="style gap (colour, light) plus texture, near-identical ids, pose, occlusion and camera degradations",
    builtin=(
        dict(name="mall", cams=6, backgrounds=("indoor",), bg_colors=((0.80, 0.74, 0.62), (0.55, 0.45, 0.35)),
             gain=(1.18, 1.00, 0.80), saturation=1.1, light=(0.8, 1.0), blur_kind="defocus", blur=(0.0, 1.0),
             lowres=(1.0, 1.4), jpeg=(70, 92), views=(0.45, 0.35, 0.20), occlude=0.2),
        dict(name="campus", cams=8, backgrounds=("foliage", "street"),
             bg_colors=((0.20, 0.45, 0.18), (0.55, 0.70, 0.35)),
             gain=(0.84, 1.00, 1.20), brightness=1.1, contrast=1.3, gamma=0.85, saturation=1.25,
             light=(0.9, 1.2), blur_kind="motion", blur=(0.0, 5.0), lowres=(1.0, 2.0), jpeg=(50, 85),
             views=(0.3, 0.3, 0.4), scale=(0.62, 0.88), shift=0.09, cut=(0.05, 0.1), occlude=0.25),
        dict(name="cctv", cams=5, backgrounds=("street", "wall"), bg_colors=((0.60, 0.62, 0.68), (0.35, 0.36, 0.40)),
             gain=(1.0, 0.92, 1.14), brightness=0.9, contrast=0.75, gamma=1.15, saturation=0.5,
             light=(0.45, 0.9), well=700.0, read_noise=0.01, chroma=0.02, blur_kind="defocus", blur=(0.8, 2.0),
             lowres=(2.0, 3.0), jpeg=(20, 45), views=(0.3, 0.3, 0.4), scale=(0.6, 0.85), shift=0.1,
             cut=(0.1, 0.1), occlude=0.3),
        dict(name="transit", cams=6, backgrounds=("indoor", "gradient"),
             bg_colors=((0.70, 0.75, 0.70), (0.30, 0.35, 0.32)),
             gain=(0.86, 1.20, 0.90), brightness=1.2, contrast=0.85, gamma=0.8, saturation=0.8,
             light=(0.5, 1.0), well=900.0, read_noise=0.008, chroma=0.01, blur_kind="mixed", blur=(0.5, 3.0),
             lowres=(1.3, 2.2), jpeg=(35, 70), views=(0.35, 0.35, 0.30), scale=(0.75, 1.0), shift=0.1,
             cut=(0.2, 0.2), occlude=0.5, occluders=(1.0, 1.0, 2.0)),
        dict(name="night", cams=4, backgrounds=("street", "wall"), bg_colors=((0.45, 0.40, 0.35), (0.30, 0.30, 0.32)),
             gain=(1.3, 0.95, 0.62), contrast=0.9, saturation=0.7, light=(0.06, 0.12), max_gain=6.0,
             well=600.0, read_noise=0.008, chroma=0.035, blur_kind="motion", blur=(1.5, 4.0), lowres=(3.0, 4.0),
             jpeg=(12, 30), views=(1 / 3, 1 / 3, 1 / 3), scale=(0.6, 0.9), shift=0.1, cut=(0.1, 0.1), occlude=0.3),
    ),
    base=_HARD_BASE,
    random=dict(
        cams=(3, 9), gain=(0.75, 1.25), brightness=(0.65, 1.3), contrast=(0.7, 1.35), gamma=(0.75, 1.25),
        saturation=(0.5, 1.25), light=(0.05, 1.1), well=(500.0, 1500.0), read_noise=(0.004, 0.014),
        chroma=(0.0, 0.04), blur_kind=("none", "defocus", "motion", "mixed"), blur=(0.0, 5.0),
        lowres=(1.0, 4.0), jpeg=(10, 95), scale=(0.6, 0.95), shift=(0.03, 0.12), cut=(0.0, 0.25),
        occlude=(0.05, 0.5),
    ),
    style_colour=True, cam_colour_jitter=0.1, palette="cloth",
    top_patterns=(("solid", 3), ("hstripes", 1), ("vstripes", 1), ("dstripes", 0.7), ("checks", 1),
                  ("plaid", 0.7), ("dots", 0.7), ("print", 1), ("logo", 1), ("twotone", 1)),
    bottom_patterns=(("solid", 5), ("sidestripe", 1), ("checks", 0.7), ("faded", 1)),
    period=(0.02, 0.11), sibling_frac=0.45, max_group=3,
    sibling_edits=("bag", "bag_color", "hat", "glasses", "shoes", "sleeves", "top2", "belt", "hair", "logo"),
    sizes=_SIZES,
)

_GEOM_BASE = dict(
    _HARD_BASE, backgrounds=("indoor", "foliage", "wall", "street", "gradient"), light=(1.0, 1.0), well=1500.0,
    read_noise=0.006, chroma=0.0, jpeg=(92, 92),
)

GEOM = FamilySpec(
    name="geom", tag=7002, version=1,
    purpose="no colour gap at all: domains differ only in blur, resolution, viewpoint, occlusion and framing",
    builtin=(
        dict(name="front-sharp", cams=6, blur_kind="none", views=(0.5, 0.45, 0.05), scale=(0.85, 0.95),
             shift=0.03, cut=(0.0, 0.0), occlude=0.05, arms=(0.9, 0.1, 0.0)),
        dict(name="side-wide", cams=6, blur_kind="defocus", blur=(0.0, 0.7), lowres=(1.2, 1.6),
             views=(0.1, 0.1, 0.8), scale=(0.55, 0.7), shift=0.12, cut=(0.0, 0.05), occlude=0.15,
             arms=(0.3, 0.6, 0.1)),
        dict(name="lowres-defocus", cams=5, blur_kind="defocus", blur=(1.2, 2.5), lowres=(2.5, 3.5),
             views=(0.35, 0.35, 0.3), scale=(0.82, 1.0), shift=0.06, cut=(0.05, 0.3), occlude=0.1),
        dict(name="occluded-motion", cams=6, blur_kind="motion", blur=(3.0, 7.0), lowres=(1.2, 1.8),
             views=(0.3, 0.3, 0.4), scale=(0.85, 1.05), shift=0.1, cut=(0.3, 0.1), occlude=0.6,
             occluders=(1.0, 1.0, 2.0), arms=(0.4, 0.3, 0.3)),
        dict(name="far-cctv", cams=5, blur_kind="mixed", blur=(0.5, 2.5), lowres=(2.0, 3.0),
             views=(0.25, 0.25, 0.5), scale=(0.6, 0.8), shift=0.1, cut=(0.1, 0.1), occlude=0.3),
    ),
    base=_GEOM_BASE,
    random=dict(
        cams=(3, 9), blur_kind=("none", "defocus", "motion", "mixed"), blur=(0.0, 6.0), lowres=(1.0, 3.5),
        scale=(0.55, 1.05), shift=(0.03, 0.12), cut=(0.0, 0.3), occlude=(0.05, 0.6),
    ),
    style_colour=False, cam_colour_jitter=0.0, palette="continuous",
    top_patterns=(("solid", 8), ("twotone", 1), ("hstripes", 1)),
    bottom_patterns=(("solid", 1),),
    period=(0.06, 0.11), sibling_frac=0.4, max_group=2,
    sibling_edits=("top_value", "bottom_value", "top_sat", "shoes_value"),
    sizes=_SIZES,
)

# ---------------------------------------------------------------------------- held-out families
# Three families written for the pre-registered test of the search (experiments/preregistered/
# PLAN.md) and never used to develop it. `overlay` (a profile key of these families only) lays a
# periodic pattern over each image, a shift in mid-level texture statistics rather than in colour.

_TEX_BASE = dict(_GEOM_BASE, overlay=None, occlude=0.1, blur_kind="none", lowres=(1.0, 1.0))

TEX = FamilySpec(
    name="tex", tag=7003, version=1,
    purpose="identity in absolute colour, one colour pipeline; domains differ in a mid-level texture overlay",
    builtin=(
        dict(name="stripes", cams=6, overlay=("grating", 0.35, 6.0, 0.0)),
        dict(name="bars", cams=6, overlay=("grating", 0.35, 8.0, 90.0)),
        dict(name="checker", cams=5, overlay=("checker", 0.30, 6.0, 0.0)),
        dict(name="diagonal", cams=6, overlay=("grating", 0.35, 7.0, 45.0)),
        dict(name="dots", cams=5, overlay=("dots", 0.35, 8.0, 0.0)),
    ),
    base=_TEX_BASE,
    random=dict(cams=(3, 9), scale=(0.6, 1.0), shift=(0.03, 0.1), occlude=(0.05, 0.3)),
    style_colour=False, cam_colour_jitter=0.0, palette="continuous",
    top_patterns=(("solid", 8), ("twotone", 1)),
    bottom_patterns=(("solid", 1),),
    period=(0.06, 0.11), sibling_frac=0.3, max_group=2,
    sibling_edits=("top_value", "bottom_value", "top_sat", "shoes_value"),
    sizes=_SIZES,
)

_DUO_BASE = dict(_HARD_BASE, overlay=None, occlude=0.15)

DUO = FamilySpec(
    name="duo", tag=7004, version=1,
    purpose="two sources in, three held out: colour cast and light with moderate blur and resolution shifts",
    builtin=(
        dict(name="lobby", cams=6, backgrounds=("indoor",), bg_colors=((0.78, 0.72, 0.60), (0.50, 0.44, 0.36)),
             gain=(1.12, 1.00, 0.86), light=(0.8, 1.1), blur_kind="defocus", blur=(0.0, 0.8), lowres=(1.0, 1.3),
             jpeg=(75, 92)),
        dict(name="plaza", cams=7, backgrounds=("street", "foliage"), bg_colors=((0.45, 0.55, 0.42), (0.62, 0.64, 0.6)),
             gain=(0.9, 1.02, 1.12), brightness=1.1, contrast=1.15, saturation=1.15, light=(0.8, 1.2),
             blur_kind="motion", blur=(0.0, 3.0), lowres=(1.0, 1.6), jpeg=(60, 88)),
        dict(name="garage", cams=5, backgrounds=("wall", "street"), bg_colors=((0.5, 0.5, 0.52), (0.3, 0.3, 0.32)),
             gain=(0.95, 1.0, 1.08), brightness=0.85, contrast=0.8, gamma=1.1, saturation=0.7, light=(0.3, 0.7),
             well=900.0, read_noise=0.009, blur_kind="defocus", blur=(0.5, 1.5), lowres=(1.5, 2.2), jpeg=(40, 70)),
        dict(name="station", cams=6, backgrounds=("indoor", "gradient"), bg_colors=((0.7, 0.7, 0.75), (0.4, 0.4, 0.45)),
             gain=(1.05, 0.95, 1.05), brightness=1.15, gamma=0.9, saturation=0.9, light=(0.6, 1.0),
             blur_kind="mixed", blur=(0.3, 2.0), lowres=(1.2, 1.8), jpeg=(50, 80), occlude=0.3),
        dict(name="dusk", cams=5, backgrounds=("street", "foliage"), bg_colors=((0.35, 0.3, 0.4), (0.25, 0.22, 0.3)),
             gain=(1.2, 0.95, 0.8), contrast=0.9, saturation=0.8, light=(0.2, 0.45), well=800.0, read_noise=0.008,
             chroma=0.015, blur_kind="motion", blur=(1.0, 3.0), lowres=(1.5, 2.5), jpeg=(30, 60)),
    ),
    base=_DUO_BASE,
    random=dict(HARD.random),
    style_colour=True, cam_colour_jitter=0.08, palette="cloth",
    top_patterns=(("solid", 3), ("hstripes", 1), ("vstripes", 1), ("checks", 1), ("print", 1), ("logo", 1),
                  ("twotone", 1)),
    bottom_patterns=(("solid", 5), ("sidestripe", 1), ("checks", 0.7)),
    period=(0.03, 0.1), sibling_frac=0.25, max_group=2,
    sibling_edits=("bag", "bag_color", "hat", "glasses", "shoes", "sleeves", "top2", "belt"),
    sizes=_SIZES,
)

_CLEAR_BASE = dict(_HARD_BASE, overlay=None, occlude=0.05, cut=(0.0, 0.0), light=(0.95, 1.05), jpeg=(90, 95),
                   views=(0.45, 0.45, 0.10), scale=(0.82, 0.94), shift=0.03)

CLEAR = FamilySpec(
    name="clear", tag=7005, version=1,
    purpose="a larger signal: distinct people, clean cameras; domains differ in colour cast, light and contrast",
    builtin=(
        dict(name="warm", cams=4, backgrounds=("indoor",), bg_colors=((0.8, 0.72, 0.6), (0.55, 0.46, 0.38)),
             gain=(1.25, 1.0, 0.78), brightness=1.05, saturation=1.1),
        dict(name="cold", cams=4, backgrounds=("street",), bg_colors=((0.55, 0.6, 0.7), (0.35, 0.4, 0.5)),
             gain=(0.8, 1.0, 1.25), brightness=0.95, contrast=1.2, gamma=0.9),
        dict(name="green", cams=4, backgrounds=("foliage",), bg_colors=((0.3, 0.5, 0.25), (0.5, 0.65, 0.4)),
             gain=(0.9, 1.2, 0.9), brightness=1.15, contrast=0.85, gamma=1.1, saturation=0.8),
        dict(name="dim", cams=4, backgrounds=("wall",), bg_colors=((0.5, 0.45, 0.5), (0.3, 0.28, 0.32)),
             gain=(1.1, 0.9, 1.05), brightness=0.7, contrast=0.75, gamma=1.2, saturation=0.6),
    ),
    base=_CLEAR_BASE,
    random=dict(cams=(3, 6), gain=(0.75, 1.25), brightness=(0.7, 1.2), contrast=(0.75, 1.25), gamma=(0.8, 1.2),
                saturation=(0.6, 1.2)),
    style_colour=True, cam_colour_jitter=0.05, palette="cloth",
    top_patterns=(("solid", 3), ("hstripes", 1), ("vstripes", 1), ("checks", 1), ("logo", 1), ("twotone", 1)),
    bottom_patterns=(("solid", 5), ("sidestripe", 1)),
    period=(0.04, 0.1), sibling_frac=0.05, max_group=2,
    sibling_edits=("bag", "hat", "glasses", "shoes"),
    sizes=_SIZES,
)

SPECS = {"hard": HARD, "geom": GEOM, "tex": TEX, "duo": DUO, "clear": CLEAR}


def get_spec(family: str) -> FamilySpec:
    if family not in SPECS:
        raise OsnasError(f"synthetic family {family!r}: unknown; expected one of synth, {', '.join(SPECS)}")
    return SPECS[family]


# ============================================================================ domain profiles
def domain_profile(family: str, k: int, seed: int = 0) -> dict:
    """The profile of domain k of `family`: cameras, colour pipeline and degradation ranges."""
    spec = get_spec(family)
    if not 0 <= k < S.MAX_DOMAINS:
        raise OsnasError(f"synthetic domain {family}{k}: index out of range; "
                         f"expected {family}0 .. {family}{S.MAX_DOMAINS - 1}")
    prof = dict(spec.base)
    if k < len(spec.builtin):
        prof.update(spec.builtin[k])
    else:
        r = np.random.default_rng([seed, spec.tag, 7919, k])
        rnd = spec.random
        prof["name"] = f"random{k}"
        for key, rng_ in rnd.items():
            if key == "cams":
                prof[key] = int(r.integers(rng_[0], rng_[1] + 1))
            elif key == "gain":
                g = r.uniform(rng_[0], rng_[1], 3)
                prof[key] = tuple(float(v) for v in g / g.mean())
            elif key == "blur_kind":
                prof[key] = str(r.choice(rng_))
            elif key in ("light", "blur", "lowres", "scale", "jpeg"):  # a sub-range of the range
                a, b = sorted(r.uniform(rng_[0], rng_[1], 2))
                if key == "light":  # log-uniform: dark domains as likely as bright ones
                    a, b = sorted(np.exp(r.uniform(np.log(rng_[0]), np.log(rng_[1]), 2)))
                prof[key] = (int(a), int(b)) if key == "jpeg" else (float(a), float(b))
            elif key == "cut":
                prof[key] = tuple(float(v) for v in r.uniform(rng_[0], rng_[1], 2))
            else:
                prof[key] = float(r.uniform(rng_[0], rng_[1]))
        if prof["blur_kind"] == "none":
            prof["blur"] = (0.0, 0.0)
        if spec.style_colour:
            prof["backgrounds"] = (str(r.choice(spec.base["backgrounds"])),)
            prof["bg_colors"] = (tuple(float(v) for v in r.uniform(0.2, 0.85, 3)),
                                 tuple(float(v) for v in r.uniform(0.15, 0.7, 3)))
    if not spec.style_colour:  # the geometry family: one colour pipeline for every domain
        for key in _COLOUR_KEYS + ("light", "well", "read_noise", "chroma", "jpeg"):
            prof[key] = spec.base[key]
    return prof


def _json_ready(x):
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


# ============================================================================ identities
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _weighted(r: np.random.Generator, pairs) -> str:
    names = [a for a, _ in pairs]
    w = np.array([b for _, b in pairs], np.float64)
    return str(names[int(r.choice(len(names), p=w / w.sum()))])


def _colour(r: np.random.Generator, spec: FamilySpec, kind: str = "top") -> np.ndarray:
    if spec.palette == "cloth":
        if kind == "bottom":
            return S._jit(r, S._CLOTH[r.choice(len(S._CLOTH), p=S._BOTTOM_W / S._BOTTOM_W.sum())], 0.05)
        return S._jit(r, S._CLOTH[r.integers(len(S._CLOTH))], 0.05)
    # continuous: any hue, any brightness (brightness is a large part of identity here)
    if kind == "bottom":
        return _hsv(float(r.random()), float(r.uniform(0.0, 0.7)), float(r.uniform(0.08, 0.85)))
    return _hsv(float(r.random()), float(r.uniform(0.0, 0.9)), float(r.uniform(0.08, 0.97)))


def _identity(r: np.random.Generator, spec: FamilySpec) -> dict:
    """A person: body, clothing colours, textures (pattern and scale), hair, accessories."""
    top = _colour(r, spec)
    return dict(
        height=float(r.uniform(0.86, 1.0)),
        build=float(r.uniform(0.82, 1.22)),
        head=float(r.uniform(0.055, 0.070)),
        skin=S._jit(r, S._SKIN[r.integers(len(S._SKIN))], 0.03),
        hair=S._jit(r, S._HAIR[r.choice(len(S._HAIR), p=S._HAIR_W / S._HAIR_W.sum())], 0.03),
        hair_style=str(r.choice(["short"] * 5 + ["long"] * 3 + ["bun"])),
        hat=_colour(r, spec) if r.random() < 0.12 else None,
        glasses=bool(r.random() < 0.15),
        top=top,
        top2=_colour(r, spec),
        top_pattern=_weighted(r, spec.top_patterns),
        period=float(np.exp(r.uniform(np.log(spec.period[0]), np.log(spec.period[1])))),
        waves=r.normal(0, 1, (3, 2)).astype(np.float32),  # directions of the 'print' texture
        phases=r.uniform(0, 2 * np.pi, 3).astype(np.float32),
        logo=int(r.integers(3)),
        sleeves=str(r.choice(["long", "long", "short"])),
        belt=_colour(r, spec) if r.random() < 0.2 else None,
        bottom=_colour(r, spec, "bottom"),
        bottom2=_colour(r, spec),
        bottom_pattern=_weighted(r, spec.bottom_patterns),
        lower=str(r.choice(["trousers"] * 6 + ["shorts"] * 2 + ["skirt"])),
        shoes=S._jit(r, S._CLOTH[r.choice([15, 12, 16, 14, 8, 0])], 0.04) if spec.palette == "cloth"
        else _hsv(float(r.random()), float(r.uniform(0, 0.5)), float(r.uniform(0.05, 0.95))),
        bag=str(r.choice(["none", "none", "backpack", "shoulder", "hand"])),
        bag_color=_colour(r, spec),
        bag_side=int(r.choice([-1, 1])),
    )


def _scale_value(c: np.ndarray, f: float) -> np.ndarray:
    return np.clip(np.asarray(c, np.float32) * np.float32(f), 0, 1)


def _sibling(base: dict, r: np.random.Generator, spec: FamilySpec) -> dict:
    """A near-identical copy of `base`: same clothes, one accessory or small detail changed."""
    p = dict(base)
    edit = str(r.choice(spec.sibling_edits))
    if edit == "bag":
        p["bag"] = str(r.choice([b for b in ("none", "backpack", "shoulder", "hand") if b != base["bag"]]))
    elif edit == "bag_color":
        p["bag"] = base["bag"] if base["bag"] != "none" else "backpack"
        p["bag_color"] = _colour(r, spec)
    elif edit == "hat":
        p["hat"] = None if base["hat"] is not None else _colour(r, spec)
    elif edit == "glasses":
        p["glasses"] = not base["glasses"]
    elif edit == "shoes":
        p["shoes"] = S._jit(r, S._CLOTH[r.choice([15, 12, 16, 14, 8, 0])], 0.04)
    elif edit == "sleeves":
        p["sleeves"] = "short" if base["sleeves"] == "long" else "long"
    elif edit == "top2":  # a plain top gets a logo; a patterned one a slightly different second colour
        if base["top_pattern"] == "solid":
            p["top_pattern"] = "logo"
            p["top2"] = _colour(r, spec)
        else:
            p["top2"] = np.clip(np.asarray(base["top2"], np.float32) + r.choice([-1, 1], 3) * r.uniform(0.12, 0.2, 3),
                                0, 1).astype(np.float32)
    elif edit == "belt":
        p["belt"] = None if base["belt"] is not None else _colour(r, spec)
    elif edit == "hair":
        p["hair_style"] = str(r.choice([h for h in ("short", "long", "bun") if h != base["hair_style"]]))
    elif edit == "logo":
        p["top_pattern"] = "logo"
        p["logo"] = (base["logo"] + 1 + int(r.integers(2))) % 3
    elif edit in ("top_value", "bottom_value", "shoes_value"):  # same hue, lighter or darker
        key = edit.split("_")[0]
        f = float(r.choice([0.6, 0.7, 1.4, 1.6]))
        c = np.asarray(base[key], np.float32)
        if c.max() * f > 1.0 or c.max() * f < 0.06:  # would clip: go the other way
            f = 1.0 / f
        p[key] = _scale_value(c, f) if c.max() > 0.02 else np.full(3, 0.35, np.float32)
    elif edit == "top_sat":  # same brightness, more or less saturated
        c = np.asarray(base["top"], np.float32)
        grey = np.full(3, c.mean(), np.float32)
        p["top"] = np.clip(grey + (c - grey) * np.float32(r.choice([0.3, 2.0])), 0, 1)
    p["edit"] = edit
    return p


def _groups(plan_ids: list[int], r: np.random.Generator, spec: FamilySpec) -> list[list[int]]:
    """Near-identical groups (2..max_group ids of the same split)."""
    ids = [int(i) for i in r.permutation(plan_ids)]
    g_mean = (2 + spec.max_group) / 2
    f = spec.sibling_frac
    q = f / (g_mean * (1 - f) + f)  # chance to start a group, so that about a fraction f is grouped
    groups, i = [], 0
    while i < len(ids) - 1:
        if r.random() < q:
            n = int(r.integers(2, spec.max_group + 1))
            g = sorted(ids[i:i + n])
            if len(g) >= 2:
                groups.append(g)
            i += n
        else:
            i += 1
    return groups


# ============================================================================ drawing
def _pattern(p: dict, u, v, ph: float, back: bool, side: bool):
    """Weight of the second top colour (0, 0.5 or 1) on the torso, or None for plain."""
    kind = p["top_pattern"]
    per = max(p["period"] * ph, 1.6)
    tu, tv = u * ph + 1000.0, (v - 0.16) * ph
    if kind == "hstripes":
        return np.floor(tv / per) % 2
    if kind == "vstripes":
        return np.floor(tu / per) % 2
    if kind == "dstripes":
        return np.floor((tu + tv) / (1.3 * per)) % 2
    if kind == "checks":
        return (np.floor(tv / per) + np.floor(tu / per)) % 2
    if kind == "plaid":
        return 0.5 * ((np.floor(tv / per) % 2) + (np.floor(tu / per) % 2))
    if kind == "dots":
        fy, fx = tv / per % 1.0 - 0.5, tu / per % 1.0 - 0.5
        return (fy * fy + fx * fx < 0.09).astype(np.float32)
    if kind == "print":
        acc = 0.0
        for (a, b), ph0 in zip(p["waves"], p["phases"]):
            acc = acc + np.sin((a * tu + b * tv) * (2.2 / per) + ph0)
        return (acc > 0.6).astype(np.float32)
    if kind == "twotone":
        return (v >= 0.34).astype(np.float32)
    if kind == "logo" and not back and not side:
        du, dv = u / 0.06, (v - 0.29) / 0.06
        shape = [du**2 + dv**2 < 1, (np.abs(du) < 0.9) & (np.abs(dv) < 0.9), np.abs(du) + np.abs(dv) < 1.1][p["logo"]]
        return shape.astype(np.float32)
    return None


class _Body:
    """One person drawn onto an image crop: the crop (`out`), its body coordinates (u across,
    v down, in person heights), what is drawn so far, and the parts (`leg`, `arm`, `torso`,
    `head`) that `_draw_person` puts together for the view."""

    def __init__(self, p: dict, pose: dict, out: np.ndarray, u: np.ndarray, v: np.ndarray):
        self.p, self.pose, self.out, self.u, self.v = p, pose, out, u, v
        view = pose["view"]
        self.side, self.back = view in ("left", "right"), view == "back"
        self.s = 1.0 if view == "right" else -1.0  # facing direction in a side view
        self.b = p["build"] * (0.62 if self.side else 1.0)  # a side view is narrower
        h, w = out.shape[:2]
        self.drawn = np.zeros((h, w), bool)
        self.hv, self.hr = 0.085, p["head"]
        self.sw, self.hw = 0.125 * self.b, 0.105 * self.b
        self.lower_cut = {"trousers": 0.95, "shorts": 0.70, "skirt": 0.50}[p["lower"]]
        self.sleeve = 0.27 if p["sleeves"] == "short" else 0.50
        self.bcol = self._bottom_colour(pose["ph"])

    def _bottom_colour(self, ph: float) -> np.ndarray:
        p, u, v = self.p, self.u, self.v
        h, w = self.out.shape[:2]
        bcol = np.broadcast_to(p["bottom"], (h, w, 3))
        if p["bottom_pattern"] == "checks":
            per = max(p["period"] * 1.2 * ph, 1.6)
            chk = ((np.floor(u * ph / per + 1000) + np.floor(v * ph / per)) % 2).astype(bool)
            bcol = np.where(chk[..., None], p["bottom"] * np.float32(0.65), bcol)
        elif p["bottom_pattern"] == "faded":
            bcol = p["bottom"] * (1.0 + 0.35 * np.clip((v - 0.5) / 0.45, 0, 1))[..., None]
            bcol = np.clip(bcol, 0, 1).astype(np.float32)
        return bcol

    def put(self, mask, color, shade=1.0):
        c = np.asarray(color, np.float32)
        if shade != 1.0:
            c = c * np.float32(shade)
        self.out[mask] = c if c.ndim == 1 else c[mask]
        self.drawn[mask] = True

    def leg(self, lx, shade=1.0):
        p, u, v, put = self.p, self.u, self.v, self.put
        half = 0.048 * p["build"] - 0.01 * np.clip(v - 0.52, 0, 0.45)
        m = (np.abs(u - lx) < half) & (v >= 0.50) & (v < 0.95)
        put(m & (v >= self.lower_cut), p["skin"], shade)
        put(m & (v < self.lower_cut), self.bcol, shade)
        if p["bottom_pattern"] == "sidestripe":
            put(m & (v < self.lower_cut) & (np.abs(np.abs(u - lx) - 0.036 * p["build"]) < 0.009), p["bottom2"], shade)
        toe = self.s * 0.02 if self.side else 0.008
        put((np.abs(u - lx - toe) < 0.048 * p["build"] + (0.012 if self.side else 0)) & (v >= 0.94) & (v < 0.99),
            p["shoes"], shade)

    def arm(self, ax, shade=1.0, raised=False):
        p, u, v, put, sleeve = self.p, self.u, self.v, self.put, self.sleeve
        a = (np.abs(u - ax) < 0.033 * p["build"]) & (v >= 0.17) & (v < (0.33 if raised else 0.50))
        put(a & (v < sleeve), p["top"], shade)
        put(a & (v >= sleeve), p["skin"], shade)
        if raised:  # forearm up to the face, hand holding a phone
            fx = ax - np.sign(ax + 1e-6) * 0.06
            put((np.abs(u - fx) < 0.03) & (v >= 0.19) & (v < 0.33), p["top"] if sleeve > 0.3 else p["skin"], shade)
            put((np.abs(u - fx) < 0.025) & (v >= 0.15) & (v < 0.20), (0.08, 0.08, 0.09), shade)
        else:
            put((np.abs(u - ax) < 0.03 * p["build"]) & (v >= 0.50) & (v < 0.55), p["skin"], shade)

    def torso(self, half, centre=0.0):
        p, u, v, put = self.p, self.u, self.v, self.put
        h, w = self.out.shape[:2]
        m = (np.abs(u - centre) < half) & (v >= 0.16) & (v < 0.52)
        wgt = _pattern(p, u - centre, v, self.pose["ph"], self.back, self.side)
        col = np.broadcast_to(p["top"], (h, w, 3))
        if wgt is not None:
            col = p["top"] + (p["top2"] - p["top"]) * wgt[..., None].astype(np.float32)
        put(m, col)
        if p["belt"] is not None:
            put(m & (np.abs(v - 0.505) < 0.012), p["belt"])
        if p["lower"] == "skirt":
            sk = 0.105 * self.b + 0.12 * np.clip(v - 0.50, 0, None)
            put((np.abs(u - centre) < sk) & (v >= 0.48) & (v < 0.72), self.bcol)

    def head(self, centre=0.0):
        p, u, v, put, hv, hr, s = self.p, self.u, self.v, self.put, self.hv, self.hr, self.s
        back, side = self.back, self.side
        put((np.abs(u - centre) < 0.028) & (v >= hv + hr * 0.6) & (v < 0.17), p["skin"])
        hm = ((u - centre) / (hr * 0.85)) ** 2 + ((v - hv) / hr) ** 2 < 1
        if p["hair_style"] == "long":
            inner = 0.0 if (back or side) else hr * 0.75
            lm = (np.abs(u - centre) < hr * 1.05) & (np.abs(u - centre) >= inner) & (v >= hv) & (v < 0.23)
            if side:
                lm &= s * (u - centre) < 0.2 * hr
            put(lm, p["hair"])
        if back:
            put(hm, p["hair"])
        elif side:
            put(hm, p["skin"])
            put(hm & ((s * (u - centre) < 0.15 * hr) | (v < hv - hr * 0.35)), p["hair"])
        else:
            put(hm, p["skin"])
            put(hm & (v < hv - hr * 0.35), p["hair"])
        if p["hair_style"] == "bun":
            bu = centre - (s * hr * 0.9 if side else 0.0)
            put(((u - bu) / (hr * 0.45)) ** 2 + ((v - hv + hr * 0.85) / (hr * 0.4)) ** 2 < 1, p["hair"])
        if p["glasses"] and not back:
            gm = (np.abs(v - hv + hr * 0.05) < 0.011) & hm
            gm &= (s * (u - centre) > 0.1 * hr) if side else (np.abs(u - centre) < hr * 0.75)
            put(gm, (0.05, 0.05, 0.06))
        if p["hat"] is not None:
            put(((u - centre) / hr) ** 2 + ((v - hv + hr * 0.45) / (hr * 0.65)) ** 2 < 1, p["hat"])
            brim = centre + (s * 0.5 * hr if side else (0 if back else 0.25 * hr))
            put((np.abs(u - brim) < hr * 1.2) & (np.abs(v - hv + hr * 0.2) < 0.008), p["hat"])

    def shade(self) -> None:
        """Round the body: darker towards its sides, a little lighter at the top."""
        u, v, b = self.u, self.v, self.b
        shade = 1.0 - 0.30 * np.clip((u / (0.2 * max(b, 0.5))) ** 2, 0, 1) + 0.06 * (0.5 - np.clip(v, 0, 1))
        self.out[self.drawn] *= shade[self.drawn][:, None].astype(np.float32)


def _draw_side(d: _Body) -> None:
    """A side view: far limbs (darker, behind), near leg, torso, bags, head, near arm."""
    p, u, v, put, s, b = d.p, d.u, d.v, d.put, d.s, d.b
    stride, swing = d.pose["stride"], d.pose["swing"]
    bag = p["bag"]
    far, near = -s, s
    d.arm(far * np.tan(swing) * np.clip(v - 0.17, 0, None), 0.72)  # far limbs darker, behind
    d.leg(far * np.tan(stride * 2.2) * np.clip(v - 0.52, 0, None), 0.72)
    if bag == "backpack":
        put((s * u < -0.06 * b) & (s * u > -(0.19 * b + 0.035)) & (v >= 0.19) & (v < 0.44), p["bag_color"])
    d.leg(near * np.tan(stride * 2.2) * np.clip(v - 0.52, 0, None))
    d.torso(0.085 * p["build"] + 0.01 * np.clip((0.52 - v) / 0.36, 0, 1), centre=0.0)
    if bag == "shoulder":
        put((np.abs(u + s * 0.03) < 0.055 * p["build"]) & (v >= 0.40) & (v < 0.54), p["bag_color"])
        put((np.abs(u - (-s * 0.06 + s * 0.25 * (v - 0.16))) < 0.012) & (v >= 0.16) & (v < 0.41), p["bag_color"])
    d.head(centre=s * 0.004)
    if d.pose["arm"] == "phone":
        d.arm(near * 0.02, raised=True)
    else:
        d.arm(near * np.tan(swing) * np.clip(v - 0.17, 0, None))
    if bag == "hand":
        hx = near * np.tan(swing) * 0.36
        put((np.abs(u - hx) < 0.045) & (v >= 0.52) & (v < 0.64), p["bag_color"])


def _draw_front(d: _Body) -> None:
    """A front or back view: legs, arms, backpack straps, torso, head, bags."""
    p, u, v, put, b, back, sw = d.p, d.u, d.v, d.put, d.b, d.back, d.sw
    stride, swing = d.pose["stride"], d.pose["swing"]
    bag = p["bag"]
    for sg in (-1, 1):
        d.leg(sg * 0.052 * b + sg * stride * 0.3 * np.clip(v - 0.52, 0, None))
    for sg in (-1, 1):
        raised = d.pose["arm"] == "phone" and sg == d.pose["arm_side"]
        open_ = swing if d.pose["arm"] == "wide" else swing * 0.3
        d.arm(sg * (sw + 0.03 * b) + sg * abs(open_) * np.clip(v - 0.17, 0, None) * 0.6, raised=raised)
    if bag == "backpack" and not back:
        for sg in (-1, 1):
            put((np.abs(u - sg * 0.075 * b) < 0.014) & (v >= 0.16) & (v < 0.36), p["bag_color"])
    d.torso(sw + (d.hw - sw) * np.clip((v - 0.16) / 0.36, 0, 1))
    d.head()
    if bag == "backpack" and back:
        put((np.abs(u) < 0.10 * b) & (v >= 0.19) & (v < 0.43), p["bag_color"])
        put((np.abs(u) < 0.07 * b) & (v >= 0.31) & (v < 0.40), p["bag_color"] * np.float32(0.7))
    elif bag == "shoulder":
        sd = p["bag_side"] * (-1 if back else 1)
        put((np.abs(u - sd * 0.17 * b) < 0.055 * b) & (v >= 0.40) & (v < 0.54), p["bag_color"])
        line = np.abs((u + sd * 0.10 * b) - sd * 0.9 * (v - 0.16)) < 0.013
        put(line & (v >= 0.16) & (v < 0.42) & (np.abs(u) < sw), p["bag_color"])
    elif bag == "hand":
        sd = p["bag_side"] * (-1 if back else 1)
        put((np.abs(u - sd * (sw + 0.05 * b)) < 0.045) & (v >= 0.52) & (v < 0.64), p["bag_color"])


def _draw_person(cv, img: np.ndarray, p: dict, pose: dict) -> np.ndarray:
    """Draw identity `p` onto a copy of `img` with `pose` (view, size, position, limbs)."""
    full, out, yy, xx, v, u = S._person_box(cv, img, pose["ph"], pose["cx"], pose["y0"], pose["lean"], 0.45)
    if out is None:
        return full
    d = _Body(p, pose, out, u, v)
    (_draw_side if d.side else _draw_front)(d)
    d.shade()
    return full


def _pose(r: np.random.Generator, cam: dict, prof: dict, H: int, W: int, partial: bool = False) -> dict:
    view = ("front", "back", "side")[int(r.choice(3, p=cam["views"]))]
    if view == "side":
        view = "left" if r.random() < 0.5 else "right"
    scale = float(np.clip(cam["scale"] * (1 + r.normal(0, 0.05)), 0.4, 1.4))
    ph = H * scale
    cx = W / 2 + r.normal(0, W * prof["shift"]) + (r.uniform(-0.35, 0.35) * W if partial else 0)
    y0 = (H - ph) / 2 + r.normal(0, H * 0.03)
    cut = r.random()
    if cut < prof["cut"][0]:  # crop cuts the head
        y0 = -ph * r.uniform(0.08, 0.22)
    elif cut < prof["cut"][0] + prof["cut"][1]:  # crop cuts the legs
        ph = H * r.uniform(1.1, 1.4)
        y0 = H * r.uniform(-0.03, 0.03)
    arm = ("down", "wide", "phone")[int(r.choice(3, p=np.asarray(prof["arms"]) / np.sum(prof["arms"])))]
    return dict(view=view, ph=float(ph), cx=float(cx), y0=float(y0), lean=float(r.normal(0, 0.04)),
                stride=float(r.uniform(0.0, 0.22 if view in ("left", "right") else 0.13)),
                swing=float(r.normal(0, 0.25 if arm == "wide" else 0.12)), arm=arm, arm_side=int(r.choice([-1, 1])))


def _occlude(cv, img: np.ndarray, r: np.random.Generator, prof: dict, spec: FamilySpec) -> np.ndarray:
    """Something in front of the person: an object at the bottom, a pole, or another pedestrian."""
    H, W = cv.h, cv.w
    w = np.asarray(prof["occluders"], np.float64)
    kind = int(r.choice(3, p=w / w.sum()))
    if kind == 2:  # a pedestrian closer to the camera, at one side
        other = _identity(r, spec)
        sd = 1 if r.random() < 0.5 else -1
        pose = _pose(r, dict(views=(0.4, 0.4, 0.2), scale=r.uniform(1.0, 1.3)), prof, H, W)
        pose["cx"] = W / 2 + sd * W * r.uniform(0.45, 0.7)
        pose["y0"] = H * r.uniform(-0.1, 0.15)
        return _draw_person(cv, img, other, pose)
    col = _colour(r, spec) if spec.palette == "continuous" else S._jit(r, S._CLOTH[r.integers(len(S._CLOTH))], 0.1)
    if kind == 0:  # bench / car / luggage in front of the legs, rounded top
        y0 = H * r.uniform(0.6, 0.85)
        x0, x1 = sorted(r.uniform(-0.2, 1.2, 2) * W)
        if x1 - x0 < W * 0.4:
            x1 = x0 + W * 0.6
        bump = 4.0 * np.clip((cv.xx - x0) / max(x1 - x0, 1) * (1 - (cv.xx - x0) / max(x1 - x0, 1)), 0, 1)
        m = (cv.yy >= y0 - H * 0.05 * bump) & (cv.xx >= x0) & (cv.xx < x1)
        tex = (0.85 + 0.3 * S._fbm(r, H, W, (3, 2), 2))[..., None]
        return np.where(m[..., None], col * tex, img).astype(np.float32)
    x0 = r.uniform(0.1, 0.9) * W  # a pole or sign post
    pw = r.uniform(0.06, 0.16) * W
    m = np.abs(cv.xx - x0) < pw / 2
    grey = np.float32(r.uniform(0.3, 0.8))
    shade = (1 - 0.35 * np.abs(cv.xx - x0) / (pw / 2 + 1e-6))[..., None]
    return np.where(m[..., None], grey * np.ones(3, np.float32) * shade, img).astype(np.float32)


def _camera(r: np.random.Generator, prof: dict, spec: FamilySpec, H: int, W: int) -> dict:
    """One camera: its scene, colour map, view / scale habits and degradation strengths."""
    pad_h, pad_w = max(8, H // 6), max(8, W // 4)
    bgf = str(r.choice(prof["backgrounds"]))
    if prof["bg_colors"] is None:  # shared, mostly neutral background colours (geometry family)
        colors = (tuple(np.clip(r.uniform(0.3, 0.75) + r.normal(0, 0.06, 3), 0, 1)),
                  tuple(np.clip(r.uniform(0.2, 0.6) + r.normal(0, 0.06, 3), 0, 1)))
    else:
        colors = prof["bg_colors"]
    scene = S._scene(r, bgf, colors, H + pad_h, W + pad_w)
    if spec.style_colour:
        j = spec.cam_colour_jitter
        gain = np.asarray(prof["gain"], np.float32) * r.uniform(1 - j, 1 + j, 3)
        brightness = prof["brightness"] * r.uniform(0.9, 1.1)
        grad = r.normal(0, 0.12, 2)
        contrast = prof["contrast"] * r.uniform(0.95, 1.05)
        sat = prof["saturation"]
        M = contrast * (sat * np.eye(3) + (1 - sat) / 3.0 * np.ones((3, 3))) @ np.diag(gain)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        light = brightness * (1 + grad[0] * (yy / H - 0.5) + grad[1] * (xx / W - 0.5))
        colour = dict(MT=np.ascontiguousarray(M.T.astype(np.float32)), bias=np.float32(0.5 * (1 - contrast)),
                      light=light[..., None].astype(np.float32))
    else:
        colour = None
    views = np.asarray(prof["views"], np.float64) * r.gamma(3.0, 1.0, 3)
    lo, hi = prof["light"]
    exposure = float(np.exp(r.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
    kind = prof["blur_kind"]
    if kind == "mixed":
        kind = "motion" if r.random() < 0.5 else "defocus"
    cam = dict(
        scene=scene, colour=colour, views=views / views.sum(), scale=float(r.uniform(*prof["scale"])),
        exposure=exposure, blur_kind=kind, blur=float(r.uniform(*prof["blur"])),
        lowres=float(r.uniform(*prof["lowres"])), jpeg=int(round(r.uniform(prof["jpeg"][0], prof["jpeg"][1]))),
    )
    if prof.get("overlay"):  # the held-out families' texture: each camera's period and angle jittered
        kind_, amp, period, angle = prof["overlay"]
        cam["overlay"] = (kind_, float(amp), float(period * r.uniform(0.9, 1.1)), float(angle + r.normal(0, 5.0)))
    return cam


# ---------------------------------------------------------------------------- degradations
def _shift_sum(img: np.ndarray, offsets) -> np.ndarray:
    pad = int(max(max(abs(a), abs(b)) for a, b in offsets)) + 1
    P = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    H, W = img.shape[:2]
    out = np.zeros_like(img)
    for a, b in offsets:
        out += P[pad + a: pad + a + H, pad + b: pad + b + W]
    return out / np.float32(len(offsets))


def motion_blur(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Average along a line of `length` pixels at `angle` (radians)."""
    if length < 1.0:
        return img
    n = int(np.ceil(length)) + 1
    t = np.linspace(-length / 2, length / 2, n)
    offs = sorted({(int(round(x * np.sin(angle))), int(round(x * np.cos(angle)))) for x in t})
    return _shift_sum(img, offs)


def defocus_blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Average over a disk of `radius` pixels (a defocused lens)."""
    if radius < 0.5:
        return img
    R = int(np.floor(radius))
    offs = [(a, b) for a in range(-R, R + 1) for b in range(-R, R + 1) if a * a + b * b <= radius * radius + 0.25]
    return _shift_sum(img, offs)


def _resize(img: np.ndarray, h: int, w: int, resample) -> np.ndarray:
    from PIL import Image

    u8 = (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    return np.asarray(Image.fromarray(u8, "RGB").resize((w, h), resample), np.float32) / np.float32(255.0)


def _degrade(img: np.ndarray, cam: dict, prof: dict, r: np.random.Generator) -> np.ndarray:
    """Optics blur -> sensor resolution -> low light (shot, read and colour noise, gain) -> back to HxW."""
    from PIL import Image

    H, W = img.shape[:2]
    amount = cam["blur"] * r.uniform(0.7, 1.3)
    if cam["blur_kind"] == "motion":
        img = motion_blur(img, amount, float(r.uniform(-0.5, 0.5) if r.random() < 0.7 else r.uniform(0, np.pi)))
    elif cam["blur_kind"] == "defocus":
        img = defocus_blur(img, amount)
    f = cam["lowres"]
    low = f > 1.05
    if low:
        img = _resize(img, max(8, int(round(H / f))), max(4, int(round(W / f))), Image.BOX)
    x = img * np.float32(cam["exposure"])
    well = prof["well"]
    x = (r.poisson(np.maximum(x, 0) * well) / well).astype(np.float32)
    x += r.standard_normal(x.shape, dtype=np.float32) * np.float32(prof["read_noise"])
    x *= np.float32(min(1.0 / cam["exposure"], prof["max_gain"]))
    if prof["chroma"] > 0:
        h, w = x.shape[:2]
        blot = r.standard_normal((h // 4 + 2, w // 4 + 2, 3), dtype=np.float32) * np.float32(prof["chroma"])
        blot = S._blur(np.repeat(np.repeat(blot, 4, 0), 4, 1)[:h, :w], 2)
        x += blot - blot.mean(axis=2, keepdims=True) * np.float32(0.5)
    np.clip(x, 0, 1, out=x)
    if low:
        x = _resize(x, H, W, Image.BILINEAR)
    return x


def _render(cv, person: dict | None, cam: dict, prof: dict, spec: FamilySpec, r: np.random.Generator,
            occlude_p: float | None = None, partial: bool = False) -> np.ndarray:
    """One image (uint8 HxWx3): scene, person in a pose, occluder, colour pipeline, degradations."""
    H, W = cv.h, cv.w
    img = S._scene_crop(cv, cam, r)
    if person is not None:
        img = _draw_person(cv, img, person, _pose(r, cam, prof, H, W, partial))
        if r.random() < (prof["occlude"] if occlude_p is None else occlude_p):
            img = _occlude(cv, img, r, prof, spec)
    img = np.asarray(img, np.float32)
    col = cam["colour"]
    if col is not None:
        img = img @ col["MT"] + col["bias"]
        img *= col["light"] * np.float32(r.uniform(0.94, 1.06))
        np.clip(img, 0, 1, out=img)
        if abs(prof["gamma"] - 1.0) > 1e-6:
            img = np.power(img, np.float32(prof["gamma"]), dtype=np.float32)
    else:
        img = np.clip(img * np.float32(r.uniform(0.97, 1.03)), 0, 1)
    if cam.get("overlay"):
        img = overlay(img, *cam["overlay"], r)
    img = _degrade(img, cam, prof, r)
    return (img * 255.0 + 0.5).astype(np.uint8)


def overlay(img: np.ndarray, kind: str, amp: float, period: float, angle: float, r: np.random.Generator) -> np.ndarray:
    """A periodic pattern of zero mean laid over the image, multiplicatively, at a random phase:
    `grating` (stripes at `angle` degrees), `checker` or `dots`, `period` pixels, `amp` its
    relative contrast. It moves mid-level texture statistics and leaves the mean colour."""
    H, W = img.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    t = np.deg2rad(angle)
    ph = r.uniform(0, 2 * np.pi, 2).astype(np.float32)
    k = np.float32(2 * np.pi / period)
    if kind == "grating":
        pat = np.sin(k * (xx * np.float32(np.cos(t)) + yy * np.float32(np.sin(t))) + ph[0])
    elif kind == "checker":
        pat = np.sign(np.sin(k * xx + ph[0]) * np.sin(k * yy + ph[1]))
    elif kind == "dots":
        pat = np.sin(k * xx + ph[0]) * np.sin(k * yy + ph[1])
    else:
        raise OsnasError(f"unknown overlay {kind!r}; expected grating, checker or dots")
    return np.clip(img * (1 + np.float32(amp) * pat)[..., None], 0, 1).astype(np.float32)


# ============================================================================ one domain
def plan_domain(family: str, k: int, params: SynthParams) -> dict:
    """Identities, near-identical groups, cameras and file names of domain `family`k (no pixels)."""
    spec = get_spec(family)
    prof = domain_profile(family, k, params.seed)
    plan = S._plan_files(k, params, int(prof["cams"]), np.random.default_rng([params.seed, spec.tag, 101, k]))
    rg = np.random.default_rng([params.seed, spec.tag, 111, k])
    groups = _groups(plan["train_ids"], rg, spec) + _groups(plan["test_ids"], rg, spec)
    plan.update(family=family, name=f"{family}{k}", style=prof, groups=groups)
    return plan


def identities(plan: dict, params: SynthParams) -> dict:
    """pid -> identity of a planned domain (siblings copy their group's first id and edit one detail)."""
    spec = get_spec(plan["family"])
    k = plan["index"]
    leader = {}
    for g in plan["groups"]:
        for pid in g:
            leader[pid] = g[0]
    people = {}
    for pid in plan["train_ids"] + plan["test_ids"]:
        lead = leader.get(pid, pid)
        base = _identity(np.random.default_rng([params.seed, spec.tag, 303, k, lead]), spec)
        if lead != pid:
            base = _sibling(base, np.random.default_rng([params.seed, spec.tag, 313, k, pid]), spec)
        people[pid] = base
    return people


def cameras(plan: dict, params: SynthParams) -> list[dict]:
    spec = get_spec(plan["family"])
    return [_camera(np.random.default_rng([params.seed, spec.tag, 202, plan["index"], c]), plan["style"], spec,
                    params.height, params.width) for c in range(plan["cams"])]


def render_domain(plan: dict, params: SynthParams, progress=None):
    """Yield (split, file name, jpeg bytes) for every file of a planned family domain."""
    spec = get_spec(plan["family"])
    k, prof = plan["index"], plan["style"]
    cv = S._Canvas(params.height, params.width)
    cams = cameras(plan, params)
    people = identities(plan, params)
    r = np.random.default_rng([params.seed, spec.tag, 404, k])
    for split, fname, pid, cam, kind in plan["files"]:
        cs = cams[cam - 1]
        if kind == "person":
            arr = _render(cv, people[pid], cs, prof, spec, r)
        elif kind == "distractor":  # somebody else, badly framed
            arr = _render(cv, _identity(r, spec), cs, prof, spec, r, occlude_p=0.5, partial=True)
        else:  # junk: background only, or a fragment of somebody
            arr = _render(cv, _identity(r, spec) if r.random() < 0.5 else None, cs, prof, spec, r, occlude_p=1.0,
                          partial=True)
        q = cs["jpeg"] if spec.style_colour else params.quality
        q = int(np.clip(q + r.integers(-3, 4) if spec.style_colour else q, 5, 98))
        yield split, fname, S._jpeg(arr, q)
        if progress is not None:
            progress.update(1)


def preview_grid(family: str, k: int, params: SynthParams, n_ids: int = 6) -> np.ndarray:
    """(n_ids x cameras) grid: near-identical groups first (adjacent rows), every camera, with the
    domain's poses, occlusions and degradations (what the network will see)."""
    plan = plan_domain(family, k, params)
    spec = get_spec(family)
    prof = plan["style"]
    H, W = params.height, params.width
    cv = S._Canvas(H, W)
    cams = cameras(plan, params)
    people = identities(plan, params)
    pids = [pid for g in plan["groups"] for pid in g][:n_ids]
    pids += [pid for pid in plan["train_ids"] + plan["test_ids"] if pid not in pids][: n_ids - len(pids)]
    r = np.random.default_rng([params.seed, spec.tag, 505, k])
    gap = 2
    grid = np.full((len(pids) * (H + gap) - gap, len(cams) * (W + gap) - gap, 3), 255, np.uint8)
    for i, pid in enumerate(pids):
        for j, cs in enumerate(cams):
            grid[i * (H + gap): i * (H + gap) + H, j * (W + gap): j * (W + gap) + W] = _render(
                cv, people[pid], cs, prof, spec, r)
    return grid


def marker_extra(plan: dict, params: SynthParams) -> dict:
    """Family fields of a domain's marker (osnas_synth.json)."""
    spec = get_spec(plan["family"])
    return dict(family=spec.name, family_version=spec.version, params_hash=spec.params_hash(params, plan["index"]),
                purpose=spec.purpose, style=_json_ready(plan["style"]),
                near_identical_groups=len(plan["groups"]))


# the synth module stores and names every family; it reaches this one through its registry
S.FAMILIES.update({name: sys.modules[__name__] for name in SPECS})
