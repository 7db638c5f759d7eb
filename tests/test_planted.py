"""Planted-answer searches: data built so that one normalisation at the stem is known to be
right; the search (CLI `osnas search` + `osnas derive`) must find it in >= 4 of 5 seeds
(`test_planted_five_seeds`, marked slow: ~1.5-2 min on 2 shared cores; the default run has
`test_planted_quick`, seeds 1-3, >= 2 of 3, ~45-75 s).

The space has one position, the stem, with candidates {bn, in} (a custom space file), so
the derived genotype's stem op is the search's answer.

(a) IN is right (`in_right`; objective lodo over 3 source domains): an identity is a code of
    bright and dark blocks (a spatial pattern, the same codes in every domain). Every image
    gets its own random contrast a (0.1..0.6, log-uniform), brightness b (0..0.4) and
    channel gains g_c (0.85..1.15): x = 255 (b + a g_c P) + noise. An affine change of
    the input is an affine change of each channel of the bias-free stem conv, and IN
    removes exactly that per image (up to the zero-padded border and the small channel
    gains), so every image of a pattern reaches the rest of the network alike, in the
    held-out domain too. BN normalises with batch statistics: the per-image contrast and
    brightness survive it and the network must learn to ignore a 6x contrast range and a
    large offset from 2 domains before it is judged on the third. IN wins.

(b) IN is wrong (`in_wrong`; objective heldout): the normalised image is t (v + T_k), v a
    fixed colour direction, T_k one of 4 textures shared by all identities, t the
    identity's level (6 levels from 0.3 to 1.2, +-10% per image). The identity is only in
    the per-image channel statistics (means t v and scale t): exactly what IN removes.
    The stem conv has no bias, so IN's output does not depend on t at all (borders
    included): through IN every identity looks the same. BN keeps t (relative to the batch;
    batches of 24 = all 6 identities x 4 keep that reference stable). BN wins.

Measured during development (2-core CPU, these exact settings, derive's choice):
(a) IN in 15 of 15 seeds (1..15), and in 24 of 24 on an earlier revision of the package
(bilevel batches drawn differently); with objective=heldout (batch 12) IN in 9 of 10 (1..10).
(b) BN in 19 of 20 seeds (1..20). Designs that were tried and are less reliable (~90%):
identity as a free colour (IN keeps a trace at the zero-padded border), batches of 8 for
(b) (the batch-relative level is too noisy). The wrong seeds follow trajectories where the
first alpha steps go the wrong way and the weights then adapt to that side. Runs are
deterministic on CPU, so a failure here after a change means the search changed.
"""

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import yaml

from _planted_data import block_images, scaled_level_images
from _reid_gen import write_market
from osnas.cli import main

H, W = 32, 16
SPACE = "name: stem_only\nrelaxation: softmax\npositions:\n  - {site: stem, candidates: [bn, in]}\n"
SEARCH = ["model.arch=osnet_x0_25", f"data.height={H}", f"data.width={W}", "data.batch_size=8",
          "data.num_instances=2", "data.workers=0", "data.color_jitter=false", "data.flip=false",
          "run.progress=false", "run.log_every=1000", "search.steps_per_epoch=10", "search.lr=0.1",
          "search.alpha_lr=0.05", "search.alpha_betas=[0.9,0.999]",
          # the recipe the counts above were measured with: one supernet trained on the whole mixture,
          # an alpha step at every step, judged by the identity loss (derive reads it by argmax)
          "search.runs=1", "search.weight_step=mixed", "search.alpha_every=1", "search.alpha_loss=id"]
SEEDS = [1, 2, 3, 4, 5]


def _in_right_sources(tmp, seed):
    """3 domains x 4 identities x 8 images of block codes under per-image contrast/brightness."""
    rng = np.random.default_rng(1000 + seed)
    codes, out = None, []
    for d in range(3):
        items, codes = block_images(rng, 4, 8, H, W, contrast=(0.1, 0.6), brightness=(0.0, 0.4), colour=0.15,
                                    codes=codes)
        out.append(f"custom:{write_market(tmp / f'd{d}', items)}")
    return out


def _in_wrong_sources(tmp, seed):
    """1 domain x 6 identities x 8 images: identity = level of the per-channel statistics."""
    rng = np.random.default_rng(1000 + seed)
    levels = [0.3, 0.396, 0.522, 0.689, 0.909, 1.2]  # ratio 1.32
    return [f"custom:{write_market(tmp / 'd0', scaled_level_images(rng, 6, 8, H, W, levels))}"]


# per-case search settings on top of SEARCH
CASE = {"in_right": ["search.epochs=7", "search.warmup_epochs=4"],
        "in_wrong": ["search.epochs=6", "search.warmup_epochs=3", "data.batch_size=24", "data.num_instances=4"]}


def planted_search(tmp, case, seed, objective=None, extra=()):
    """Search the stem position on the planted data, derive; returns (choice, final row)."""
    tmp.mkdir(parents=True, exist_ok=True)
    space = tmp / "stem_only.yaml"
    space.write_text(SPACE)
    if case == "in_right":
        sources, objective = _in_right_sources(tmp, seed), objective or "lodo"
    else:
        sources, objective = _in_wrong_sources(tmp, seed), objective or "heldout"
    run = tmp / "search"
    sets = SEARCH + CASE[case] + [f"search.objective={objective}", f"run.seed={seed}"] + list(extra)
    rc = main(["search", "--sources", ",".join(sources), "--space", str(space), "--out", str(run)]
              + [x for s in sets for x in ("--set", s)])
    assert rc == 0
    with redirect_stdout(io.StringIO()):
        assert main(["derive", "--run", str(run)]) == 0
    g = yaml.safe_load((run / "genotype.yaml").read_text())
    last = json.loads((run / "alphas.jsonl").read_text().splitlines()[-1])
    p = last["probs"]["stem"]
    assert g["plan"]["stem"] == g["positions"]["stem"]["choice"]
    if g["select"] == "argmax":
        assert g["positions"]["stem"]["choice"] == max(p, key=p.get)
    return g["positions"]["stem"]["choice"], last


_PICKS = {}  # (case, seed, objective, extra) -> (choice, probability): runs shared by the tests below


def _found(tmp_path, case, seeds, objective=None, extra=()):
    """{seed: (choice, its probability)}; each run once per test session."""
    picks = {}
    for s in seeds:
        key = (case, s, objective, tuple(extra))
        if key not in _PICKS:
            choice, last = planted_search(tmp_path / f"{case}-{s}", case, s, objective=objective, extra=extra)
            _PICKS[key] = (choice, last["probs"]["stem"][choice])
        picks[s] = _PICKS[key]
    return picks


def _hits(picks, want):
    """Seeds that chose `want` with probability above 1/2 (a tie at the uniform start, i.e.
    alphas that never moved, would otherwise give the first candidate, bn)."""
    return sum(c == want and p > 0.5 for c, p in picks.values())


CASES = [("in_right", "in"), ("in_wrong", "bn")]


@pytest.mark.parametrize("case,want", CASES)
def test_planted_quick(tmp_path, case, want):
    """The default (budget) version: seeds 1-3, the planted answer in >= 2 of them.
    (The full 5-seed check below takes 1.5-2 minutes on 2 busy cores, hence `slow`.)"""
    picks = _found(tmp_path, case, SEEDS[:3])
    assert _hits(picks, want) >= 2, picks


@pytest.mark.slow
@pytest.mark.parametrize("case,want", CASES)
def test_planted_five_seeds(tmp_path, case, want):
    """IN-right data: IN at the stem; IN-wrong data: BN at the stem; in >= 4 of 5 seeds."""
    picks = _found(tmp_path, case, SEEDS)
    assert _hits(picks, want) >= 4, picks


@pytest.mark.slow
def test_planted_in_is_right_heldout_objective(tmp_path):
    """The IN-right data under objective=heldout (alpha batches: held-out images of the
    training identities, all domains): IN still wins in >= 4 of 5 seeds."""
    picks = _found(tmp_path, "in_right", SEEDS, objective="heldout", extra=("data.batch_size=12",))
    assert _hits(picks, "in") >= 4, picks


@pytest.mark.slow
@pytest.mark.parametrize("case,want", CASES)
def test_planted_ten_seeds(tmp_path, case, want):
    """The development check: the planted answer in >= 8 of 10 further seeds (measured: 10
    of 10 for in_right, 9 of 10 for in_wrong)."""
    picks = _found(tmp_path, case, range(6, 16))
    assert _hits(picks, want) >= 8, picks


@pytest.mark.slow
@pytest.mark.parametrize("case,want", CASES)
def test_planted_five_seeds_sampled_weight_step(tmp_path, case, want):
    """The single-path weight step (search.weight_step=sampled) finds both planted answers too,
    in >= 4 of 5 seeds."""
    picks = _found(tmp_path, case, SEEDS, extra=("search.weight_step=sampled",))
    assert _hits(picks, want) >= 4, picks


@pytest.mark.slow
@pytest.mark.parametrize("case,want", CASES)
def test_planted_five_seeds_uniform_supernet_asked_by_retrieval(tmp_path, case, want):
    """A uniform single-path supernet (no alpha step) derived by its default selection
    (retrieval-pooled): IN at the stem only where it retrieves better beyond 2 standard errors; the
    planted answer in >= 4 of 5 seeds. Its alphas never move, so the choice alone is counted."""
    picks = {}
    for s in SEEDS:
        choice, _ = planted_search(tmp_path / f"{case}-{s}", case, s, extra=("search.weight_step=uniform",))
        picks[s] = choice
    assert sum(c == want for c in picks.values()) >= 4, picks
