"""Synthetic domain families hardK / geomK (osnas.data.synth_families) next to synthK."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from osnas.data import build_dataset
from osnas.data.datasets import canonical_name, valid_names
from osnas.data.synth import (MARKER, PRESETS, SynthParams, _domain_list, ensure_synth, is_complete, plan_domain,
                              render_domain, run_synth)
from osnas.data import synth_families as F
from osnas.errors import OsnasError

TINY = PRESETS["tiny"]
# a little larger than tiny, small images: enough images per domain for statistics, still fast
STATS = SynthParams(train_ids=12, test_ids=2, min_images=4, max_images=4, distractors=0, junk=0, height=64, width=32)

# sha256 over (split, file name, JPEG bytes) of every file of synth0..synth3 at the tiny
# preset, in render_domain order. Computed with the generator BEFORE the hard/geom families
# were added (same snippet as _domain_digest below, run on the unmodified osnas/data/synth.py):
# synthK must stay byte-for-byte the same.
SYNTH_TINY_SHA256 = {
    0: "454c2154994da2d5577329b58ce023726d309e507d4aedbe0673c98aa613946c",
    1: "ed9bff7b0b35230d130efe1b70b59c6d92a7f395cdd35f0e207e904c0db54051",
    2: "3fd86ef19a572cb5415a894cec019a7dcefa50b1f54b11f0fa68bfb063e054b9",
    3: "85077be2acc1ea30a45d1323044464aa15400010dc7e6f79f90683b0b0775ca6",
}
SYNTH_TINY_PARAMS_HASH = "c97e16723159ab27"  # TINY.hash() before the change (cached synth domains stay valid)


def _domain_digest(k, params, family="synth") -> str:
    h = hashlib.sha256()
    for split, fn, data in render_domain(plan_domain(k, params, family), params):
        h.update(split.encode())
        h.update(fn.encode())
        h.update(data)
    return h.hexdigest()


def _train_images(family, k, params=STATS) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32)
                     for s, _, b in render_domain(plan_domain(k, params, family), params) if s == "bounding_box_train"])


def test_synth_family_unchanged():
    assert TINY.hash() == SYNTH_TINY_PARAMS_HASH
    for k, want in SYNTH_TINY_SHA256.items():
        assert _domain_digest(k, TINY) == want, f"synth{k} pixels changed"


def test_deterministic_layout_and_counts(tmp_path, capsys):
    root = tmp_path / "root"
    a = run_synth(root / "synth", domains=["hard4", "geom1"], params=TINY)
    b = run_synth(tmp_path / "b", domains="geom1", params=TINY)
    out = capsys.readouterr().out
    assert "hard4:" in out and "geom1:" in out
    files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    assert files(a[1]) == files(b[0])  # same bytes twice
    assert _domain_digest(2, TINY, "hard") == _domain_digest(2, TINY, "hard")
    assert _domain_digest(2, TINY, "hard") != _domain_digest(2, TINY, "geom")
    m = json.loads((a[0] / MARKER).read_text())
    assert m["family"] == "hard" and m["style"]["name"] == "night" and (a[0] / "preview.png").is_file()
    assert is_complete(a[0], TINY) and not is_complete(a[0], STATS)
    for name in ("hard4", "geom1"):
        ds = build_dataset(name, root)
        assert ds.name == name and ds.num_train_pids == TINY.train_ids
        q_ids, g_ids = {it[1] for it in ds.query}, {it[1] for it in ds.gallery}
        assert len(q_ids) == TINY.test_ids and g_ids == q_ids | {0}
        assert sum(it[1] == 0 for it in ds.gallery) == TINY.distractors
        assert sum(n.startswith("-1_") for n in os.listdir(os.path.join(ds.root, "bounding_box_test"))) == TINY.junk
        with Image.open(ds.train[0][0]) as im:
            assert im.size == (TINY.width, TINY.height) and im.mode == "RGB"


def test_auto_generation_and_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OSNAS_SYNTH_PRESET", "tiny")
    ds = build_dataset("GEOM0", tmp_path)  # generated on first use into ROOT/synth/geom0
    assert "generating synthetic domain(s) geom0" in capsys.readouterr().err
    assert ds.name == "geom0" and (tmp_path / "synth" / "geom0" / MARKER).is_file()
    ensure_synth(tmp_path, ["geom0"])
    assert "generating" not in capsys.readouterr().err  # cached
    # the default sizes of the new families: 150-300 test ids per domain (small evaluation noise)
    for fam in F.SPECS.values():
        assert 150 <= fam.sizes["default"].test_ids <= 300 and fam.sizes["tiny"] == TINY


def test_names_and_bad_input(tmp_path):
    assert canonical_name(" Hard3 ") == "hard3" and canonical_name("geom0") == "geom0"
    assert "hard0..hardN" in valid_names() and "geom0..geomN" in valid_names()
    assert _domain_list("synth0,hard4") == [("synth", 0), ("hard", 4)]
    assert _domain_list(["geom"]) == [("geom", k) for k in range(5)]  # the built-in ones
    assert _domain_list("hard:2") == [("hard", 0), ("hard", 1)]
    assert _domain_list("3") == [("synth", k) for k in range(3)]
    for bad, msg in (("hard64", "index out of range"), ("geom99", "index out of range")):
        with pytest.raises(OsnasError, match=msg) as e:
            canonical_name(bad)
        assert "\n" not in str(e.value)
    for bad in (["soft1"], ["hard:0"], "geom:x"):
        with pytest.raises(OsnasError, match="synthetic domain") as e:
            run_synth(tmp_path, domains=bad, params=TINY)
        assert "\n" not in str(e.value)
    with pytest.raises(OsnasError, match="unknown dataset"):
        canonical_name("soft1")
    with pytest.raises(OsnasError, match="unknown; expected one of"):
        F.domain_profile("soft", 0)
    assert F.domain_profile("hard", 63)["name"] == "random63"  # random domains beyond the built-in ones


def test_style_family_varies_colour_and_geometry_family_does_not():
    def stats(family, ks):
        per = []
        for k in ks:
            x = _train_images(family, k)
            mean = x.reshape(-1, 3).mean(0)
            per.append(np.concatenate([mean, [mean[0] - mean[1], mean[2] - mean[1]],
                                       x.reshape(len(x), -1, 3).std(1).mean(0)]))
        per = np.array(per)
        spread = per.max(0) - per.min(0)
        return spread[:3].max(), spread[3:5].max(), spread[5:].max()

    h_mean, h_chroma, h_std = stats("hard", range(5))
    g_mean, g_chroma, g_std = stats("geom", range(5))
    assert h_mean > 50 and h_chroma > 40 and h_std > 25  # colour cast, light, contrast differ
    assert g_mean < 25 and g_chroma < 12  # one colour pipeline for every geom domain
    assert h_mean > 3 * g_mean and h_chroma > 3 * g_chroma and h_std > 1.5 * g_std
    for k in range(6):  # and by construction: no colour map on any geom camera
        plan = F.plan_domain("geom", k, STATS)
        assert all(c["colour"] is None for c in F.cameras(plan, STATS))
        assert all(plan["style"][key] == F.GEOM.base[key] for key in ("gain", "brightness", "gamma", "light"))


def test_near_identical_identities():
    params = SynthParams(train_ids=30, test_ids=20, min_images=4, max_images=4, height=64, width=32)
    for family in ("hard", "geom"):
        plan = F.plan_domain(family, 0, params)
        people = F.identities(plan, params)
        assert len(plan["groups"]) >= 3
        train, test = set(plan["train_ids"]), set(plan["test_ids"])
        assert all(set(g) <= train or set(g) <= test for g in plan["groups"])  # a group stays in one split
        spec, prof = F.get_spec(family), plan["style"]
        cam = F.cameras(plan, params)[0]
        cv = F.S._Canvas(params.height, params.width)

        def img(pid):  # the same three poses, camera, noise draws for any identity
            r = np.random.default_rng(1)
            return np.stack([F._render(cv, people[pid], cam, prof, spec, r, occlude_p=0.0) for _ in range(3)]
                            ).astype(np.float32)

        grouped = {p for g in plan["groups"] for p in g}
        loners = [p for p in sorted(train | test) if p not in grouped]
        sib = [np.abs(img(g[0]) - img(g[1])).mean() for g in plan["groups"]]
        other = [np.abs(img(a) - img(b)).mean() for a, b in zip(loners[:8], loners[1:9])]
        # hard: one small detail differs; geom: a whole garment is lighter / darker (same hue)
        assert np.median(sib) < (0.35 if family == "hard" else 0.75) * np.median(other), (family, sib, other)
        assert all(s > 0 for s in sib)  # near-identical, not identical
        assert all(people[g[1]]["edit"] in spec.sibling_edits for g in plan["groups"])


def test_degradations_in_hard_domain():
    def hf(x):  # high-frequency energy relative to the variance
        d = np.diff(x, axis=2)[:, :-1] ** 2 + np.diff(x, axis=1)[:, :, :-1] ** 2
        return d.mean() / x.var(axis=(1, 2)).mean()

    clean, night = _train_images("hard", 0), _train_images("hard", 4)
    assert hf(night) < 0.5 * hf(clean)  # low resolution and blur
    assert night.mean() < 0.6 * clean.mean()  # low light
    # sensor noise: a flat grey patch through one camera of each domain
    flat = np.full((64, 32, 3), 0.5, np.float32)
    noise = {}
    for k in (0, 4):
        plan = F.plan_domain("hard", k, STATS)
        cam = dict(F.cameras(plan, STATS)[0], lowres=1.0, blur=0.0)
        noise[k] = F._degrade(flat, cam, plan["style"], np.random.default_rng(0)).std()
    assert noise[4] > 2.5 * noise[0] and noise[4] > 0.05
    # camera settings vary per camera inside a domain
    cams = F.cameras(F.plan_domain("hard", 2, STATS), STATS)
    assert len({round(c["lowres"], 3) for c in cams}) == len(cams) and len({c["jpeg"] for c in cams}) > 1


def test_cli_data_info(tmp_path):
    env = dict(os.environ, OSNAS_SYNTH_PRESET="tiny", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "osnas", "data", "info", "hard1", "--data-root", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hard1") and "gallery holds 2 distractor" in r.stdout
    r = subprocess.run([sys.executable, "-m", "osnas", "data", "info", "hard77", "--data-root", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "index out of range" in r.stderr
