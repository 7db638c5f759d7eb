"""`osnas derive --select retrieval`: the batch mAP, BN recalibration, the ascent, provenance.

The batch mAP is checked against the evaluation's own metric; the recalibration against a
standalone derived network; the coordinate ascent on scores with a known optimum; the pooled
gallery and its two halves of kept-out people; the selection on two tiny recorded runs of
osnet_ain_blocks (lodo, and unseen with the triplet alpha loss), each run read alone and
several combined by vote.
"""

import numpy as np
import pytest
import torch

from conftest import TINY
from osnas.cli import main
from osnas.derive import load_run, load_supernet, run_derive
from osnas.errors import OsnasError
from osnas.metrics import evaluate_rank
from osnas.models import build_model
from osnas.models.genotype import load_genotype
from osnas.search import run_search
from osnas.derive.retrieval import (SubnetScorer, batch_retrieval_map, coordinate_ascent, describe, identity_aps,
                                   pick, query_aps)
from osnas.derive.prefix import recalibrated_bn

# one supernet per run folder, in the space whose candidate names these tests use
SEARCH = TINY + ["search.epochs=3", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=1",
                 "search.space=osnet_ain_blocks"]
NAMES = ["plain", "in_res", "in_post", "both"]


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    """A tiny lodo run (seed 1) and a tiny unseen-objective run (seed 2) on synth0..2."""
    base = tmp_path_factory.mktemp("retrieval-runs")
    lodo = run_search(data_root=str(synth_root), out=str(base / "lodo"),
                      overrides=SEARCH + ["run.seed=1", "search.objective=lodo"])
    unseen = run_search(data_root=str(synth_root), out=str(base / "unseen"),
                        overrides=SEARCH + ["run.seed=2", "search.objective=unseen"])
    return [lodo, unseen]


# ----------------------------------------------------------------------------- batch mAP
def test_batch_map_equals_the_evaluation_metric_of_each_image_against_the_rest():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(12, 5, generator=g)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # identity 3 has one image: not a query
    f_n = torch.nn.functional.normalize(f, dim=1).numpy()
    aps = []
    for q in range(12):
        if int((pids == pids[q]).sum()) < 2:
            continue
        rest = [j for j in range(12) if j != q]
        dist = 1 - f_n[[q]] @ f_n[rest].T  # cosine distance (1, 11)
        # every image its own camera: nothing is removed from the gallery
        r = evaluate_rank(dist, pids[[q]].numpy(), pids[rest].numpy(), np.array([100]), np.arange(11), max_rank=5)
        aps.append(r["mAP"])
    assert batch_retrieval_map(f, pids) == pytest.approx(float(np.mean(aps)), abs=1e-6)


def test_batch_map_is_one_for_separated_identities_and_nan_without_pairs():
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    f = torch.nn.functional.one_hot(pids, 3).float() + 0.01 * torch.randn(6, 3)
    assert batch_retrieval_map(f, pids) == pytest.approx(1.0)
    assert batch_retrieval_map(torch.randn(3, 4), torch.tensor([0, 1, 2])) != batch_retrieval_map(
        torch.randn(3, 4), torch.tensor([0, 1, 2]))  # nan != nan


def test_identity_aps_pool_the_batches_and_average_each_identity():
    """The pooled gallery: each image a query against every other image of all batches; the
    units of the standard error are identities (their queries' mean AP), in pid order."""
    g = torch.Generator().manual_seed(1)
    f = torch.randn(10, 4, generator=g)
    pids = torch.tensor([3, 3, 3, 1, 1, 7, 7, 7, 7, 9])  # identity 9 has one image: not a query
    aps, q = query_aps(f, pids)
    assert q.tolist() == [3, 3, 3, 1, 1, 7, 7, 7, 7] and batch_retrieval_map(f, pids) == pytest.approx(float(aps.mean()))
    per_id = identity_aps(f, pids)
    assert per_id == pytest.approx([float(aps[3:5].mean()), float(aps[:3].mean()), float(aps[5:].mean())])
    # a gallery of two batches is harder than each batch alone: the other batch's identities compete
    one = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [-0.8, -0.6]])  # ids 0, 0, 1, 1: easy alone
    two = torch.tensor([[0.95, 0.31], [0.6, 0.8], [-0.95, -0.31], [-0.6, -0.8]])  # ids 2, 2, 3, 3: close to them
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert batch_retrieval_map(one, ids[:4]) == 1.0 and batch_retrieval_map(two, ids[4:]) == 1.0
    assert sum(identity_aps(torch.cat([one, two]), ids)) / 4 < 0.9


# ----------------------------------------------------------------------------- pick and ascent
def test_pick_takes_the_simplest_candidate_within_two_standard_errors_of_the_best():
    base = [0.50, 0.52, 0.48, 0.51, 0.49, 0.50, 0.53, 0.47]
    plain = base
    small_win = [x + 0.002 + 0.01 * (-1) ** i for i, x in enumerate(base)]  # +0.002 ± 0.0038 (se): noise
    big_win = [x + 0.05 + 0.001 * (-1) ** i for i, x in enumerate(base)]  # far beyond 2 standard errors
    c, gaps = pick([plain, small_win], simplicity=[0, 1])
    assert c == 0 and gaps[1] == 0 and 0 < gaps[0] <= 2  # IN's edge is inside the noise: no IN
    c, gaps = pick([plain, small_win, big_win], simplicity=[0, 1, 2])
    assert c == 2 and gaps[0] > 2 and gaps[1] > 2
    c, _ = pick([plain, small_win], simplicity=[0, 1], z=0.0)  # no tolerance: the larger mean
    assert c == 1
    # among candidates within the noise, the fewest IN sites, then the larger mean
    near = [x + 0.002 + 0.01 * (-1) ** i for i, x in enumerate(big_win)]  # best mean, big_win within noise
    assert pick([small_win, big_win, near], simplicity=[0, 1, 1])[0] == 2  # same IN count: the larger mean
    assert pick([small_win, big_win, near], simplicity=[0, 1, 2])[0] == 1  # fewer IN sites


def _space(simplicity):
    """A stand-in for a SearchSpace with these positions (what `describe` reads of a space)."""
    from types import SimpleNamespace

    return SimpleNamespace(positions=[SimpleNamespace(name=f"p{i}", names=[f"c{c}" for c in range(len(s))],
                                                      in_counts=list(s)) for i, s in enumerate(simplicity)])


def test_coordinate_ascent_finds_the_optimum_of_a_separable_score():
    best = [1, 0, 3, 2]

    def per_batch(path):
        s = -sum((c - b) ** 2 for c, b in zip(path, best))
        return [s + 0.001 * k for k in range(4)]  # the same offset for every path: exactly paired

    simplicity = [[0, 1], [0, 1, 1, 2], [0, 1, 1, 2], [0, 1, 1, 2]]
    path, sweeps = coordinate_ascent(per_batch, simplicity, start=[0, 0, 0, 0])
    assert path == best and sweeps == 2  # the second sweep changes nothing
    for i, d in enumerate(describe(per_batch, _space(simplicity), path)):
        means, gaps = list(d["scores"].values()), list(d["gap_se"].values())
        assert max(range(len(means)), key=means.__getitem__) == best[i] and gaps[best[i]] == 0
        assert d["gate_se"] == 2.0


def test_coordinate_ascent_stays_without_in_when_nothing_beats_it():
    path, sweeps = coordinate_ascent(lambda p: [0.0, 0.1], [[0, 1, 2], [0, 1]], start=[0, 0])
    assert path == [0, 0] and sweeps == 1
    d = describe(lambda p: [0.0, 0.1], _space([[0, 1, 2], [0, 1]]), path)
    assert [list(x["scores"].values()) for x in d] == [[0.05] * 3, [0.05] * 2]
    assert [set(x["gap_se"].values()) for x in d] == [{0.0}, {0.0}]  # no difference at all


def test_coordinate_ascent_follows_the_gate_and_stops_after_the_sweeps():
    """An IN candidate 1.32 standard errors better stays out at the gate 2 and comes in at 1;
    a score whose optimum moves with every sweep stops after `sweeps`."""
    edge = [0.015, -0.005, 0.015, -0.005, 0.015, -0.005, 0.015, -0.005]  # +0.005, 0.0038 se: t = 1.32
    per_batch = lambda p: [0.5 + (e if p[0] == 1 else 0.0) for e in edge]  # noqa: E731
    assert coordinate_ascent(per_batch, [[0, 1]], [0]) == ([0], 1)
    assert coordinate_ascent(per_batch, [[0, 1]], [0], z=1.0) == ([1], 2)
    visits = [0]

    def flipping(path):  # the better candidate changes at every visit of the position
        if path == [0]:  # candidate 0 is scored first at every visit
            visits[0] += 1
        return [float(path[0] == visits[0] % 2) + 0.01 * k for k in range(4)]

    assert coordinate_ascent(flipping, [[0, 0]], [0], sweeps=3) == ([1], 3)


# ----------------------------------------------------------------------------- recalibration
def test_scorer_equals_the_standalone_derived_network_with_recalibrated_bn(runs):
    """A subnet's score = the derived network (its own module, the supernet's weights) with
    BN re-estimated on the same weight batches and scored on the same alpha batches."""
    run = load_run(runs[1])
    sc = SubnetScorer(run, batches=2)
    assert len(sc.val) == 2 and len(sc.calib) == 2
    assert {int(d) for b in sc.val for d in b[3]} == {2}  # unseen: the last source's alpha batches only
    before = {k: v.clone() for k, v in sc.model.state_dict().items()}
    path = [0, 1, 2, 3, 0, 1]
    choices = dict(zip([p.name for p in run.space.positions], [NAMES[c] for c in path]))
    score = sc(path)
    assert all(torch.equal(v, sc.model.state_dict()[k]) for k, v in before.items())  # supernet untouched
    assert sc.model.training is False and sc(path) == score and sc.evaluations == 1
    g = sc.model.genotype()
    g.plan = run.space.plan_for(choices)
    net = build_model(g, num_classes=sc.model.net.head.classifier.out_features, arch="osnet_x0_25")
    net.load_state_dict(sc.model.derived_state_dict(g))
    with recalibrated_bn(net, net, sc.calib), torch.no_grad():
        maps = [batch_retrieval_map(net(b[0]), b[1]) for b in sc.val]
    assert score == pytest.approx(sum(maps) / len(maps), abs=1e-5)
    assert sc([0] * 6) != score  # another subnet, another score
    pooled = SubnetScorer(run, batches=2, gallery="pooled")  # the same images as one gallery, per identity
    with recalibrated_bn(net, net, sc.calib), torch.no_grad():
        want = identity_aps(torch.cat([net(b[0]) for b in sc.val]), torch.cat([b[1] for b in sc.val]))
    assert pooled.per_batch(path) == pytest.approx(want, abs=1e-5)
    assert len(want) == len({int(i) for b in sc.val for i in b[1]})
    with pytest.raises(OsnasError, match="unknown retrieval gallery 'big'; valid: batch, pooled"):
        SubnetScorer(run, batches=2, gallery="big")


def test_the_pooled_gallery_holds_each_image_once(runs):
    """Beyond one pass over the unseen source its PK stream draws images again; a copy is its own
    perfect match, so the pooled gallery keeps each image's first copy only."""
    run = load_run(runs[1])
    sc = SubnetScorer(run, batches=12, gallery="pooled")
    raw = load_supernet(run, 12)  # the same alpha batches, copies and all
    index = [k for b in raw.val_index for k in b]
    assert len(raw.val) == 12 and len(index) > len(set(index))  # the stream came round again
    first = torch.tensor([k not in index[:j] for j, k in enumerate(index)])
    assert sum(len(b[1]) for b in sc.val) == len(set(index)) == int(first.sum())
    path = [0, 2, 0, 0, 1, 0]
    fwd = lambda x: sc.model(x, path=path)  # noqa: E731
    with recalibrated_bn(sc.model, fwd, sc.calib), torch.no_grad():
        f, pids = torch.cat([fwd(b[0]) for b in raw.val]), torch.cat([b[1] for b in raw.val])
    assert sc.per_batch(path) == pytest.approx(identity_aps(f[first], pids[first]), abs=1e-5)
    assert sc.per_batch(path) != pytest.approx(identity_aps(f, pids), abs=1e-5)  # the copies would count


def test_the_two_halves_split_the_kept_out_people(runs):
    """half=0 and half=1 read twice the batches and keep disjoint halves of their identities
    (derive chooses on half 0 and checks the answer against the published designs on half 1):
    together they are the pooled gallery of all those batches. Recalibration uses the first half
    of the weight batches, as many as a scorer without halves would."""
    run = load_run(runs[1])
    whole = SubnetScorer(run, batches=6, gallery="pooled")
    halves = [SubnetScorer(run, batches=3, gallery="pooled", half=h) for h in (0, 1)]
    ids = [{int(p) for b in sc.val for p in b[1]} for sc in halves]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert ids[0] | ids[1] == {int(p) for b in whole.val for p in b[1]}
    assert abs(len(ids[0]) - len(ids[1])) <= 1
    assert len(halves[0].calib) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(halves[0].calib, whole.calib))
    path = [0, 1, 0, 0, 0, 0]
    assert len(halves[0].per_batch(path)) == len(ids[0]) and len(halves[1].per_batch(path)) == len(ids[1])
    with pytest.raises(OsnasError, match="a half of the kept-out identities is a setting of the pooled gallery"):
        SubnetScorer(run, batches=3, gallery="batch", half=0)


def test_recalibration_restores_the_statistics_and_the_mode(runs):
    run = load_run(runs[0])
    sc = SubnetScorer(run, batches=1)
    bns = [m for m in sc.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    sc.model.train()
    fwd = lambda x: sc.model(x, path=[0] * 6)  # noqa: E731  (plain everywhere: every BN runs)
    with recalibrated_bn(sc.model, fwd, sc.calib + sc.calib) as m:
        assert m.training is False
        used = [int(b.num_batches_tracked) for b in bns if int(b.num_batches_tracked) > 0]
        assert used and set(used) == {2 * len(sc.calib)}
        assert any(not torch.equal(b.running_mean, s[0]) for b, s in zip(bns, saved))
    assert sc.model.training is True
    assert all(torch.equal(b.running_mean, s[0]) and torch.equal(b.num_batches_tracked, s[1]) and b.momentum == s[2]
               for b, s in zip(bns, saved))


# ----------------------------------------------------------------------------- selection
def test_retrieval_on_a_recorded_run_records_scores_and_is_deterministic(runs, tmp_path):
    # the search's own answer (no check against the published designs: test_derive_decide.py)
    a = load_genotype(run_derive(runs[0], out=tmp_path / "a.yaml", select="retrieval", batches=1, against=()))
    b = load_genotype(run_derive(runs[0], out=tmp_path / "b.yaml", select="retrieval", batches=1, against=()))
    assert a.plan == b.plan and a.positions == b.positions and a.decision == {}
    assert a.select == "retrieval" and a.runs == [str(runs[0])] and set(a.agreement.values()) == {1.0}
    for p, v in a.positions.items():
        s, gap = v["scores"], v["gap_se"]
        assert set(s) == set(NAMES) and all(0 <= x <= 1 for x in s.values())
        # the choice is within 2 standard errors of the best, and no simpler candidate is
        assert gap[v["choice"]] <= 2, (p, s, gap)
        simpler = {"plain": [], "in_res": ["plain"], "in_post": ["plain"], "both": ["plain", "in_res", "in_post"]}
        assert all(gap[c] > 2 for c in simpler[v["choice"]]), (p, s, gap)


class _Preferring:
    """A stand-in SubnetScorer whose per-batch score is minus the number of positions off
    `prefer[run folder name]`, with the same batch offsets for every path (exactly paired)."""

    prefer: dict = {}

    def __init__(self, run, batches=4, data_root=None, device="auto", gallery="batch", half=None):
        self.want = self.prefer[run.path.name]
        self.gallery, self.half = gallery, half
        self.evaluations = 0

    def release(self):  # derive frees a scorer's kept activations after use
        pass

    def per_batch(self, path):
        s = -sum(p != q for p, q in zip(path, self.want))
        return [s + 0.01 * k for k in range(6)]

    def __call__(self, path):
        return sum(self.per_batch(path)) / 6


def test_retrieval_of_several_runs_reads_each_alone_then_votes(runs, tmp_path, monkeypatch):
    """Two runs: each run's own retrieval answer (its scorer alone, no pooling of their units),
    then the vote; agreement per position is the share of runs whose own answer is the chosen
    candidate, and a 1-1 split goes to fewer IN sites."""
    import osnas.derive as D

    monkeypatch.setattr(_Preferring, "prefer", {"lodo": [0, 1, 2, 3, 0, 1], "unseen": [0, 1, 2, 3, 3, 3]})
    monkeypatch.setattr(D, "SubnetScorer", _Preferring)
    g = load_genotype(run_derive(runs, out=tmp_path / "m.yaml", select="retrieval", against=()))
    positions = [p.name for p in load_run(runs[0]).space.positions]
    assert [g.positions[p]["choice"] for p in positions] == ["plain", "in_res", "in_post", "both", "plain", "in_res"]
    assert list(g.agreement.values()) == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert g.select == "vote" and g.positions["conv4.0"]["run_choices"] == ["plain", "both"]
    assert g.positions["conv4.1"]["run_select"] == ["retrieval"]
    # each run's own scores at its own answer, side by side (not pooled into one score)
    for p in positions:
        own = g.positions[p]["run_scores"]
        assert len(own) == 2
        for scores, choice in zip(own, g.positions[p]["run_choices"]):
            assert max(scores["scores"], key=scores["scores"].get) == choice and scores["gap_se"][choice] == 0
    assert g.positions["conv4.1"]["run_scores"][0]["scores"]["in_res"] == pytest.approx(0.025)
    assert g.derive["methods"] == ["retrieval", "retrieval"]


def test_retrieval_pooled_is_its_own_method_in_the_provenance_and_the_plot(runs, tmp_path):
    g = load_genotype(run_derive(runs[1], out=tmp_path / "p.yaml", select="retrieval-pooled", batches=2,
                                 against=()))
    assert g.select == "retrieval-pooled" and g.name.endswith("-retrieval-pooled")
    assert all(set(v["gap_se"]) == set(v["scores"]) for p, v in g.positions.items() if p != "stem")
    from osnas.plot.readers import _retrieval

    assert _retrieval(tmp_path / "p.yaml", load_run(runs[1]).space).choices == {
        k: v["choice"] for k, v in g.positions.items()}


def test_bad_batches_is_a_one_line_error(runs, capsys):
    capsys.readouterr()
    assert main(["derive", "--run", str(runs[0]), "--select", "retrieval", "--batches", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batches" in err[0]
    # the unseen run has one alpha stream: one batch would leave the noise unknown
    assert main(["derive", "--run", str(runs[1]), "--select", "retrieval", "--batches", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 validation batches" in err[0] and "Traceback" not in err[0]


def test_the_default_selection_asks_the_supernet_only_where_it_has_unseen_data(runs, tmp_path):
    from osnas.config import build_config
    from osnas.derive import default_select

    u = load_genotype(run_derive(runs[1], out=tmp_path / "u.yaml", batches=2))
    assert u.select == "retrieval-pooled" and u.derive["methods"] == ["retrieval-pooled"]
    assert u.derive["against"] == ["osnet", "osnet_ibn", "osnet_ain"]  # retrieval runs are checked by default
    assert u.decision["verdict"] in ("searched", "published")
    assert load_genotype(run_derive(runs[0], out=tmp_path / "l.yaml")).select == "argmax"  # lodo
    assert [default_select("sampled", "lodo"), default_select("mixed", "heldout"), default_select("sampled", "unseen"),
            default_select("mixed", "identities"), default_select("uniform", "lodo")] == \
        ["argmax", "argmax", "retrieval-pooled", "retrieval-pooled", "retrieval-pooled"]
    # a config's `auto` objective is the one the search ran with: unseen with 3 sources, identities with 2
    from osnas.search.batches import resolve_objective

    s = build_config().search
    assert [default_select(s.weight_step, resolve_objective(s.objective, n)) for n in (3, 2)] == \
        ["retrieval-pooled", "retrieval-pooled"]


def test_the_summary_says_why_each_candidate_was_kept():
    """derive's table for retrieval: the chosen candidate's mAP and why (every other candidate's
    distance below it, or the better candidate it was preferred to as noise), not the
    probabilities of alphas a uniform search never moved."""
    import io

    from osnas.derive import print_summary
    from osnas.models.genotype import Genotype

    pos = {"stem": {"choice": "in", "probs": {"bn": 0.5, "in": 0.5}, "entropy": 0.69,
                    "scores": {"bn": 0.30, "in": 0.40}, "gap_se": {"bn": 5.4, "in": 0.0}},
           "conv2.0": {"choice": "plain", "probs": dict.fromkeys(NAMES, 0.25), "entropy": 1.39,
                       "scores": {"plain": 0.40, "in_res": 0.41, "in_post": 0.39, "both": 0.38},
                       "gap_se": {"plain": 1.2, "in_res": 0.0, "in_post": 2.5, "both": float("inf")}}}
    g = Genotype(plan={"stem": "in"}, name="g", positions=pos, select="retrieval")
    buf = io.StringIO()
    print_summary(g, file=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("the search's answer from ") and "select retrieval" in lines[0]
    assert "mAP %" in lines[1] and "why" in lines[1] and "prob" not in lines[1]
    assert lines[2].split()[:3] == ["stem", "in", "40.00"] and lines[2].endswith("best; the others below it in SE: bn -5.4")
    assert lines[3].split()[:3] == ["conv2.0", "plain", "40.00"]
    assert "in_res +1.00 but within 1.2 SE: noise" in lines[3]
    assert lines[4] == "IN at: stem"


def test_the_protocol_pools_two_supernets_scores_from_each_ones_cached_units(runs, synth_root):
    """run_protocol's Kendall-tau scores of a pair: each run's per-identity units, cached in that
    run's folder (so a pair and a one-run method score a shared supernet once), then pooled (the
    protocol's measurement of a pair; derive itself reads each run alone and votes); the pooled
    score is minus the mean of both runs' units."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic"))
    run_protocol = pytest.importorskip("run_protocol")
    space = load_run(runs[0]).space
    choices = [{p.name: p.names[0] for p in space.positions}, {p.name: p.names[-1] for p in space.positions}]
    job = dict(root=str(synth_root), runs=[str(r) for r in runs], batches=2, choices=choices,
               scorer="retrieval-pooled")
    pooled = run_protocol.supernet_scores(job)
    caches = [sorted(Path(r).glob("units_*.json")) for r in runs]
    assert all(len(c) == 1 for c in caches)
    units = [json.loads(c[0].read_text()) for c in caches]  # [run][architecture][unit]
    for i, score in enumerate(pooled):
        both = units[0][i] + units[1][i]
        assert score == pytest.approx(-sum(both) / len(both))
    direct = [SubnetScorer(load_run(r), batches=2, data_root=str(synth_root), gallery="pooled") for r in runs]
    path = [p.names.index(choices[1][p.name]) for p in space.positions]
    assert units[0][1] == pytest.approx(direct[0].per_batch(path)) and units[1][1] == pytest.approx(
        direct[1].per_batch(path))
    alone = run_protocol.supernet_scores(dict(job, runs=[str(runs[0])]))  # reads the first run's cache
    assert alone == pytest.approx([-sum(u) / len(u) for u in units[0]])


def test_the_gate_is_the_derives_threshold_and_is_recorded(runs, tmp_path, monkeypatch, capsys):
    """`--gate Z`: an IN candidate whose edge over the plain one is 1.5 standard errors stays
    out at the default gate (2) and comes in at --gate 1; every position records the gate it was
    chosen with. A gate below 0, or with a selection that has none, is a one-line error."""
    import osnas.derive as D

    edge = [0.015, -0.005, 0.015, -0.005, 0.015, -0.005, 0.015, -0.005]  # +0.005, 0.0038 se: t = 1.32

    class Fake:
        def __init__(self, run, batches, data_root, device, gallery="batch", half=None):
            self.evaluations, self.gallery = 0, gallery

        def release(self):  # derive frees a scorer's kept activations after use
            pass

        def per_batch(self, path):  # IN in the first block (in_res) buys `edge`; nothing else matters
            return [0.5 + (e if path[0] == 1 else 0.0) for e in edge]

        def __call__(self, path):
            return sum(self.per_batch(path)) / len(edge)

    monkeypatch.setattr(D, "SubnetScorer", Fake)
    first = load_run(runs[0]).space.positions[0].name
    g2 = load_genotype(run_derive(runs[0], out=tmp_path / "z2.yaml", select="retrieval", against=()))
    g1 = load_genotype(run_derive(runs[0], out=tmp_path / "z1.yaml", select="retrieval", gate=1.0, against=()))
    assert g2.positions[first]["choice"] == "plain" and g1.positions[first]["choice"] == "in_res"
    assert 1.0 < g2.positions[first]["gap_se"]["plain"] < 2.0
    assert {v["gate_se"] for v in g2.positions.values()} == {2.0}
    assert {v["gate_se"] for v in g1.positions.values()} == {1.0}
    assert g2.derive["gate"] == 2.0 and g1.derive["gate"] == 1.0
    assert main(["derive", "--run", str(runs[0]), "--select", "retrieval", "--gate", "1", "--against", "none",
                 "--out", str(tmp_path / "cli.yaml")]) == 0
    assert load_genotype(tmp_path / "cli.yaml").positions[first]["choice"] == "in_res"
    capsys.readouterr()
    for bad in (["--select", "retrieval", "--gate", "-1"], ["--select", "argmax", "--gate", "1"]):
        assert main(["derive", "--run", str(runs[0]), "--out", str(tmp_path / "bad.yaml"), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--gate" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "bad.yaml").exists()


# ----------------------------------------------------------------------------- vote
def test_a_vote_takes_each_positions_majority_and_breaks_ties_toward_fewer_in_sites(runs):
    """Three runs' own answers (hand-made): a majority wins with its share as the agreement; a tie
    goes to the candidate with fewer IN sites, then to the earlier one."""
    from osnas.derive import select_vote
    from osnas.models.genotype import genotype_from_probs

    rs = [load_run(r) for r in (runs[0], runs[1], runs[0])]
    space = rs[0].space
    answers = iter([["in_res", "both", "plain"], ["in_res", "plain", "in_post"], ["plain", "in_post", "in_res"]])

    def alone(run):  # the first three positions as listed, the rest plain
        names = next(answers) + ["plain"] * (len(space.positions) - 3)
        chosen = [p.names.index(n) for p, n in zip(space.positions, names)]
        return genotype_from_probs(space, run.probs, chosen=chosen, select="argmax")

    g = select_vote(rs, [alone(r) for r in rs])
    first, second, third = [p.name for p in space.positions[:3]]
    assert g.select == "vote" and g.runs == [str(r.path) for r in rs]
    assert g.positions[first]["choice"] == "in_res" and g.agreement[first] == pytest.approx(2 / 3)
    assert g.positions[first]["votes"] == {"plain": 1, "in_res": 2}
    assert g.positions[first]["run_choices"] == ["in_res", "in_res", "plain"]
    # one vote each: plain has the fewest IN sites; then in_res before in_post (same count, earlier)
    assert g.positions[second]["choice"] == "plain" and g.agreement[second] == pytest.approx(1 / 3)
    assert g.positions[third]["choice"] == "plain"
    rs2 = rs[:2]
    answers = iter([["in_post", "both", "plain"], ["in_res", "plain", "plain"]])
    g2 = select_vote(rs2, [alone(r) for r in rs2])
    assert g2.positions[first]["choice"] == "in_res" and g2.positions[second]["choice"] == "plain"
    answers = iter([["plain", "plain", "plain"]])
    with pytest.raises(OsnasError, match="several runs"):
        select_vote(rs[:1], [alone(rs[0])])


def test_the_vote_derives_each_run_by_its_own_selection(runs, tmp_path, capsys):
    """Several runs without --select: a lodo run (argmax alone) and an unseen-objective run
    (retrieval-pooled alone), each run's vote what deriving it alone gives (before any check
    against the published designs, which the argmax run leaves out)."""
    own = [load_genotype(run_derive(runs[0], out=tmp_path / "a.yaml")),
           load_genotype(run_derive(runs[1], out=tmp_path / "b.yaml", batches=2, against=()))]
    capsys.readouterr()
    assert main(["derive", "--run", str(runs[0]), str(runs[1]), "--batches", "2",
                 "--out", str(tmp_path / "v.yaml")]) == 0
    err = capsys.readouterr().err
    assert "votes" in err and "the runs' own choices" in err
    g = load_genotype(tmp_path / "v.yaml")
    for p, v in g.positions.items():
        assert v["run_choices"] == [o.positions[p]["choice"] for o in own]
        assert v["run_select"] == ["argmax", "retrieval-pooled"]
        agree = v["run_choices"].count(v["choice"]) / 2
        assert g.agreement[p] == pytest.approx(agree) and agree >= 0.5
    assert g.select == "vote" and g.decision == {}
    # the vote is no selection of its own any more: a one-line error that says so
    assert main(["derive", "--run", str(runs[0]), "--select", "vote", "--out", str(tmp_path / "one.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--select vote was removed" in err[0] and "combined by vote" in err[0]
