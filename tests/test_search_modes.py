"""Search modes through the real search loop, driven by the CLI, on tiny generated data.

Each mode (single-level, non-shared candidates, Gumbel relaxation, the `norm_sites` space,
second order) must: finish; record one alphas.jsonl row per step; keep the alphas frozen
during `search.warmup_epochs` and move them afterwards; and `osnas derive` must write a
genotype whose choices are the argmax of the final recorded probabilities.
Only stable interfaces are used: `osnas.cli.main`, run-folder files, `osnas.models`.

Every search here trains one supernet (`search.runs=1`) with an alpha step at every step after
warm-up (`search.alpha_every=1`, so the history check can ask for one), leave-one-domain-out
over the two sources (`search.objective=lodo`, whose runs derive reads by argmax).
"""

import json
import math

import pytest
import torch
import yaml

from _reid_gen import two_tiny_sources
from osnas.cli import main

H, W = 32, 16
EPOCHS, STEPS, WARMUP = 3, 2, 1
TINY = ["model.arch=osnet_x0_25", f"data.height={H}", f"data.width={W}", "data.batch_size=8",
        "data.num_instances=2", "data.workers=0", "run.progress=false", "run.log_every=1000",
        f"search.epochs={EPOCHS}", f"search.steps_per_epoch={STEPS}", f"search.warmup_epochs={WARMUP}",
        "search.runs=1", "search.alpha_every=1", "search.objective=lodo"]


def _sets(items):
    return [x for s in items for x in ("--set", s)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two tiny source domains (4 identities x 4 images, 32x16) as custom Market-style folders."""
    return two_tiny_sources(tmp_path_factory.mktemp("modes_data"), H, W)


def _search(sources, out, extra=(), space=None):
    args = ["search", "--sources", sources, "--out", str(out)] + (["--space", space] if space else [])
    rc = main(args + _sets(TINY + list(extra)))
    assert rc == 0, f"search failed with exit code {rc}"
    return out


def _rows(run):
    return [json.loads(line) for line in (run / "alphas.jsonl").read_text().splitlines() if line.strip()]


def _check_history(rows, init=0.0):
    """One row per step; alphas equal their initial value during warm-up, moved afterwards."""
    n = EPOCHS * STEPS
    assert [r["step"] for r in rows] == list(range(n))
    assert [r["epoch"] for r in rows] == [s // STEPS for s in range(n)]
    warm, on = rows[:WARMUP * STEPS], rows[WARMUP * STEPS:]
    for r in warm:
        assert r["loss_a"] is None
        assert all(v == init for a in r["alphas"].values() for v in a), r["alphas"]
    for r in on:
        assert r["loss_a"] is not None and math.isfinite(r["loss_a"])
        assert math.isfinite(r["loss_w"])
    moved = [p for p in rows[-1]["alphas"] if rows[-1]["alphas"][p] != warm[-1]["alphas"][p]]
    assert moved == list(rows[-1]["alphas"]), "every position's alphas must move after warm-up"
    for r in rows:  # probabilities are distributions, entropy is recorded per position
        for p, pr in r["probs"].items():
            assert abs(sum(pr.values()) - 1) < 1e-5 and p in r["entropy"]


def _derive(run, capsys):
    rc = main(["derive", "--run", str(run)])
    assert rc == 0
    capsys.readouterr()
    return yaml.safe_load((run / "genotype.yaml").read_text())


def _check_argmax(g, rows, run):
    """The genotype's choices are the argmax of the last recorded probabilities, and agree
    with the run's own final_alphas.json."""
    final = rows[-1]["probs"]
    assert set(g["positions"]) == set(final)
    for name, pr in final.items():
        assert g["positions"][name]["choice"] == max(pr, key=pr.get), name
        assert g["positions"][name]["probs"] == pytest.approx(pr, abs=1e-6)
    fa = json.loads((run / "final_alphas.json").read_text())
    assert {p: v["choice"] for p, v in fa["positions"].items()} == {p: v["choice"] for p, v in g["positions"].items()}
    assert g["step"] == len(rows)


def test_single_level_alphas_follow_the_training_loss(sources, tmp_path, capsys):
    """order=single (the reference): no separate alpha batch; the row's loss_a is the weight loss
    (of the whole mixture: the single-level search has no single-path weight step)."""
    run = _search(sources, tmp_path / "s", ["search.order=single", "search.weight_step=mixed"])
    rows = _rows(run)
    _check_history(rows)
    assert all(r["loss_a"] == r["loss_w"] for r in rows[WARMUP * STEPS:])
    assert json.loads((run / "run.json").read_text())["order"] == "single"
    _check_argmax(_derive(run, capsys), rows, run)


def test_non_shared_candidates_derive_and_retrain(sources, tmp_path, capsys):
    """shared=false: one block per candidate; the derived genotype names the chosen unit
    candidates and retrains as an ordinary network with the derived plan."""
    from osnas.models import build_model

    run = _search(sources, tmp_path / "s", ["search.shared=false"])
    rows = _rows(run)
    _check_history(rows)
    g = _derive(run, capsys)
    _check_argmax(g, rows, run)
    assert g["nonshared"] == {p: v["choice"] for p, v in g["positions"].items()}  # block positions = units
    rt = tmp_path / "rt"
    rc = main(["retrain", "--genotype", str(run / "genotype.yaml"), "--sources", sources, "--out", str(rt)]
              + _sets(TINY + ["train.epochs=1", "train.steps_per_epoch=2"]))
    assert rc == 0
    ck = torch.load(rt / "checkpoint.pth", weights_only=True)
    ref = build_model(run / "genotype.yaml", num_classes=ck["num_classes"], arch="osnet_x0_25").state_dict()
    assert set(ck["model"]) == set(ref)
    assert all(ck["model"][k].shape == ref[k].shape for k in ref)
    assert ck["genotype"]["plan"] == g["plan"]


def test_gumbel_relaxation_records_tau_schedule(sources, tmp_path, capsys):
    """relaxation=gumbel: tau follows tau_init * factor ** (epoch // every), floored at tau_min;
    the recorded probabilities are the noise-free softmax of the alphas."""
    sched = ["search.relaxation=gumbel", "search.tau_init=4.0", "search.tau_decay_every=1",
             "search.tau_factor=0.5", "search.tau_min=1.5"]
    run = _search(sources, tmp_path / "s", sched)
    rows = _rows(run)
    _check_history(rows)
    expect = {0: 4.0, 1: 2.0, 2: 1.5}
    assert [r["tau"] for r in rows] == [expect[r["epoch"]] for r in rows]
    for r in rows:
        for p, a in r["alphas"].items():
            sm = torch.softmax(torch.tensor(a, dtype=torch.float64), 0).tolist()
            assert list(r["probs"][p].values()) == pytest.approx(sm, abs=2e-6)
    assert json.loads((run / "run.json").read_text())["relaxation"] == "gumbel"
    _check_argmax(_derive(run, capsys), rows, run)


def test_norm_sites_space_every_site_a_position(sources, tmp_path, capsys):
    """The norm_sites space: every normalisation site is its own binary (sigmoid) position;
    the derived genotype sets each site to its chosen op and builds a network."""
    from osnas.models import build_model

    run = _search(sources, tmp_path / "s", space="norm_sites")
    rows = _rows(run)
    _check_history(rows)
    space = yaml.safe_load((run / "space.yaml").read_text())
    sites = [p["site"] for p in space["positions"]]
    assert list(rows[-1]["probs"]) == sites and len(sites) == 16
    for r in rows:  # sigmoid: one scalar alpha per site, probs [1 - s, s]
        for site, a in r["alphas"].items():
            assert len(a) == 1
            s = 1 / (1 + math.exp(-a[0]))
            assert list(r["probs"][site].values()) == pytest.approx([1 - s, s], abs=2e-6)
    g = _derive(run, capsys)
    _check_argmax(g, rows, run)
    for site in sites:
        assert g["plan"][site] == g["positions"][site]["choice"]
        assert g["plan"][site] in ("bn", "in", "none")
    m = build_model(run / "genotype.yaml", num_classes=3)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, H, W)).shape == (2, 512)


def test_second_order(sources, tmp_path, capsys):
    """order=second: the unrolled (DARTS second-order) alpha step runs and moves the alphas."""
    run = _search(sources, tmp_path / "s", ["search.order=second"])
    rows = _rows(run)
    _check_history(rows)
    assert all(r["loss_a"] != r["loss_w"] for r in rows[WARMUP * STEPS:])  # a separate alpha batch
    _check_argmax(_derive(run, capsys), rows, run)
