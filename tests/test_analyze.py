"""`osnas analyze`: the variance shares and the probe on hand-made statistics, the capture of
every normalisation site, the suggestion rule, and the command end to end on tiny domains."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from osnas.analyze import (SiteRecorder, linear_probe, measure_sites, probe_split, run_analyze, site_modules,
                           suggest_sites, suggestion_genotype, variance_shares)
from osnas.errors import OsnasError
from osnas.models import build_model
from osnas.models.genotype import load_genotype
from osnas.models.osnet import norm_sites
from osnas.models.space import load_space

FAST = TINY + ["analyze.epochs=1", "analyze.steps_per_epoch=2", "analyze.batches=2"]


def _labels(domains=3, ids=10, k=4):
    """Nested labels: `ids` identities per domain, `k` images each -> (domains (N,), pids (N,))."""
    d = np.repeat(np.arange(domains), ids * k)
    p = np.repeat(np.arange(domains * ids), k)  # global pids, each in one domain
    return d, p


# ----------------------------------------------------------------------------- variance shares
def test_domain_shift_in_channel_means_is_domain_share():
    rng = np.random.default_rng(0)
    d, p = _labels()
    x = 5.0 * rng.normal(size=(3, 8))[d] + 0.3 * rng.normal(size=(len(d), 8))  # (N, 8): domain offsets + noise
    s = variance_shares(x, d, p)
    assert s["domain"] > 0.9 and s["identity"] < 0.05, s


def test_identity_coded_channel_is_identity_share():
    rng = np.random.default_rng(1)
    d, p = _labels()
    x = 5.0 * rng.normal(size=(30, 8))[p] + 0.3 * rng.normal(size=(len(d), 8))  # identity offsets only
    s = variance_shares(x, d, p)
    assert s["identity"] > 0.9 and s["domain"] < 0.1, s


def test_noise_explains_nothing_after_the_chance_correction():
    """With K=4 images per identity, pure noise gives identity eta^2 ~ 1/K; corrected ~ 0."""
    d, p = _labels(k=4)
    x = np.random.default_rng(2).normal(size=(len(d), 16))
    s = variance_shares(x, d, p)
    assert s["identity_raw"] > 0.15  # the bias the correction removes
    assert s["identity"] < 0.08 and s["domain"] < 0.05, s
    assert variance_shares(np.ones((len(d), 4)), d, p)["domain"] == 0.0  # constant channels are skipped


# ----------------------------------------------------------------------------- probe
def test_probe_beats_chance_only_on_separable_statistics():
    rng = np.random.default_rng(3)
    d, p = _labels()
    mask = probe_split(d, p, seed=1)
    assert 0 < mask.sum() < len(d)
    for dom in range(3):  # identities split whole, within each domain
        rows = d == dom
        assert set(p[rows & mask]).isdisjoint(p[rows & ~mask]) and (rows & ~mask).any()
    sep = 3.0 * rng.normal(size=(3, 20))[d] + rng.normal(size=(len(d), 20))
    assert linear_probe(sep, d, mask) > 0.95
    assert linear_probe(np.ones((len(d), 20)), d, mask) <= 1 / 3 + 1e-9  # identical statistics: chance
    assert linear_probe(sep, d, mask) == linear_probe(sep, d, mask)  # deterministic


# ----------------------------------------------------------------------------- capture
def test_recorder_captures_what_in_would_normalise_at_every_site():
    torch.manual_seed(0)
    model = build_model("osnet", arch="osnet_x0_25").eval()
    x = torch.randn(3, 3, 64, 32)
    block_in = {}
    h = model.conv2[0].register_forward_pre_hook(lambda m, a: block_in.setdefault("x", a[0]))
    with torch.no_grad(), SiteRecorder(site_modules(model)) as rec:
        model(x)
    h.remove()
    stats = rec.result()
    assert list(stats) == norm_sites()
    assert stats["stem"]["mean"].shape == (3, 16) and stats["conv5"]["std"].shape == (3, 128)
    b = model.conv2[0]
    with torch.no_grad():
        pre = b.end(b.branch(block_in["x"])) + b.downsample(block_in["x"])  # (3, 64, H, W): before the ReLU
        assert torch.allclose(F.relu(pre), b(block_in["x"]), atol=1e-6)
    np.testing.assert_allclose(stats["conv2.0.post"]["mean"][:3], pre.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["conv2.0.post"]["std"][:3], pre.std((2, 3), unbiased=False).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert all(not m._forward_pre_hooks for m in site_modules(model).values())  # hooks removed on exit


# ----------------------------------------------------------------------------- suggestion
def _rows(scores):
    sites = norm_sites()
    rows = {s: {"score": scores.get(s, -0.1)} for s in sites}
    order = sorted(sites, key=lambda s: (-rows[s]["score"], sites.index(s)))
    for r, s in enumerate(order, 1):
        rows[s]["rank"] = r
    return rows


def test_suggestion_rule():
    space = load_space("osnet_stem_blocks")
    rows = _rows({"pool2": 0.9, "conv2.0.post": 0.5, "conv2.0.end": 0.4, "stem": 0.3})
    choices, sites = suggest_sites(rows, space, max_sites=2, min_score=0.0)
    assert sites == ["conv2.0.end", "conv2.0.post"]  # pool2 measured, never suggested
    assert choices["conv2.0"] == "both" and choices["stem"] == "bn" and choices["conv3.0"] == "plain"
    g = suggestion_genotype(space, choices, rows, "osnet_x0_25", ["a", "b"], 1)
    assert g.in_sites() == ["conv2.0.end", "conv2.0.post"] and g.select == "analyze"
    assert suggest_sites(rows, space, 3, 0.35)[1] == ["conv2.0.end", "conv2.0.post"]  # stem 0.3 below the bar
    assert suggest_sites(rows, space, 1, 0.0)[1] == ["conv2.0.post"]
    plain, none = suggest_sites(rows, space, 0, 0.0)
    assert none == [] and set(plain.values()) <= {"bn", "plain"}
    assert suggest_sites(_rows({}), space, 2, 0.0)[1] == []  # nothing positive: plain OSNet


def test_measure_sites_ranks_the_domain_coded_site_first():
    rng = np.random.default_rng(4)
    d, p = _labels(ids=6)
    n = len(d)
    dom = {"mean": 4.0 * rng.normal(size=(3, 6))[d] + rng.normal(size=(n, 6)), "std": rng.gamma(2.0, size=(n, 6))}
    ids = {"mean": 4.0 * rng.normal(size=(18, 6))[p] + rng.normal(size=(n, 6)), "std": rng.gamma(2.0, size=(n, 6))}
    rows = measure_sites({"stem": ids, "conv2.0.end": dom}, d, p, seed=1)
    assert list(rows) == ["stem", "conv2.0.end"]
    assert rows["conv2.0.end"]["rank"] == 1 and rows["stem"]["rank"] == 2
    assert rows["conv2.0.end"]["score"] > 0.3 > rows["stem"]["score"]
    assert rows["conv2.0.end"]["probe_over_chance"] > 0.4 and rows["conv2.0.end"]["channels"] == 6


# ----------------------------------------------------------------------------- end to end
def test_analyze_end_to_end_and_reuse(synth_root, tmp_path, capsys):
    out = tmp_path / "an"
    assert run_analyze(data_root=str(synth_root), overrides=FAST, out=str(out)) == out
    printed = capsys.readouterr().out
    a = json.loads((out / "analysis.json").read_text())
    assert list(a["sites"]) == norm_sites() and a["sources"] == ["synth0", "synth1", "synth2"]
    assert sorted(r["rank"] for r in a["sites"].values()) == list(range(1, len(norm_sites()) + 1))
    suggested = [s for s, r in a["sites"].items() if r["suggested"]]
    assert len(suggested) <= 2 and all(a["sites"][s]["score"] > 0 and a["sites"][s]["holdable"] for s in suggested)
    assert not any(a["sites"][s]["holdable"] for s in ("pool2", "pool3", "conv5"))
    g = load_genotype(out / "genotype.yaml")
    assert g.in_sites() == a["suggestion"]["in_sites"] == suggested and g.arch == "osnet_x0_25"
    build_model(g, num_classes=3)(torch.randn(2, 3, 64, 32))
    for f in ("site_gap.png", "site_gap_bars.png", "config.yaml"):
        assert (out / f).stat().st_size > 0, f
    assert "retrain it: osnas retrain --genotype" in printed and "conv4.1.post" in printed
    ck = out / "train" / "checkpoint.pth"
    before = ck.stat().st_mtime_ns
    run_analyze(data_root=str(synth_root), overrides=FAST, out=str(out))  # reuses the training
    assert ck.stat().st_mtime_ns == before
    assert json.loads((out / "analysis.json").read_text()) == a  # and measures the same numbers
    with pytest.raises(OsnasError, match="holds sources"):  # never trains over another run
        run_analyze(sources="synth1,synth2", data_root=str(synth_root), overrides=FAST, out=str(out))
    # more epochs: the run continues from its checkpoint; max_sites=0: plain OSNet
    capsys.readouterr()
    run_analyze(data_root=str(synth_root), overrides=FAST + ["analyze.epochs=2", "analyze.max_sites=0"], out=str(out))
    assert len((out / "train" / "train_log.jsonl").read_text().splitlines()) == 2
    assert "nowhere: plain OSNet" in capsys.readouterr().out
    assert load_genotype(out / "genotype.yaml").in_sites() == []


@pytest.mark.parametrize("sources,extra,match", [
    ("synth0", [], "at least 2 sources"),
    ("", ["analyze.batches=0"], "analyze.batches"),
    ("", ["analyze.max_sites=-1"], "analyze.max_sites"),
    ("", ["analyze.epochs=0"], "analyze.epochs"),
    ("", ["analyze.nope=1"], "unknown config key analyze.nope"),
    ("", ["analyze.space=nospace"], "unknown search space"),
])
def test_bad_input_is_one_line_error(synth_root, tmp_path, sources, extra, match):
    with pytest.raises(OsnasError, match=match) as e:
        run_analyze(sources=sources, data_root=str(synth_root), overrides=TINY + extra, out=str(tmp_path / "o"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()  # refused before anything was written
