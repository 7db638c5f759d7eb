"""`osnas derive --select argmax|perturb`, and several runs combined by vote: choices,
provenance fields, errors.

Two tiny lodo search runs (seeds 1 and 2) of osnet_ain_blocks are made once for the module (lodo
and argmax: the alphas are judged on the held-out source of each step, and derive reads them);
the vote of several runs is checked on run folders whose alphas are set by hand (known
answers), perturb on the recorded runs (determinism, recorded scores) and on losses whose
dependence on the mixture is known.
"""

import json
import shutil

import pytest
import torch
import yaml

from conftest import TINY
from osnas.cli import main
from osnas.derive import (DeriveConfig, PerturbResult, PerturbScorer, derive, load_run, perturb_select,
                          remove_candidate, run_derive, scoring_mode)
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype, load_genotype
from osnas.models.supernet import Supernet
from osnas.search import run_search

# one supernet per run folder, the space of these tests' candidate names, lodo (argmax by default)
SEARCH = TINY + ["search.epochs=3", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=1",
                 "search.space=osnet_ain_blocks", "search.objective=lodo"]
NAMES = ["plain", "in_res", "in_post", "both"]  # candidates of every position of osnet_ain_blocks
POSITIONS = ["conv2.0", "conv2.1", "conv3.0", "conv3.1", "conv4.0", "conv4.1"]


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    """Two tiny recorded search runs (seeds 1 and 2) on synth0..2, lodo."""
    base = tmp_path_factory.mktemp("derive-runs")
    return [run_search(data_root=str(synth_root), out=str(base / f"s{seed}"), overrides=SEARCH + [f"run.seed={seed}"])
            for seed in (1, 2)]


def _copy_with_probs(src, dst, probs):
    """A copy of run `src` whose alphas are log(probs) (so its probabilities are exactly `probs`)."""
    shutil.copytree(src, dst)
    ck = torch.load(dst / "checkpoint.pth", weights_only=True)
    for i, p in enumerate(probs):
        ck["model"][f"alphas.{i}"] = torch.tensor(p, dtype=torch.float32).log()
    torch.save(ck, dst / "checkpoint.pth")
    return dst


def _argmax(run):
    """One run read by the argmax of its alphas, as derive reads it with --select argmax."""
    return derive(run, DeriveConfig(select="argmax"))


def _one_line_error(args, capsys):
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("osnas: error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- argmax
def test_argmax_default_records_provenance(runs, tmp_path, capsys):
    run = runs[0]
    path = run_derive(run, out=tmp_path / "g.yaml")  # a lodo run, read by default: argmax
    g = load_genotype(path)
    ck = torch.load(run / "checkpoint.pth", weights_only=True)
    assert g.select == "argmax" and g.runs == [str(run)] and g.agreement == {p: 1.0 for p in POSITIONS}
    for i, (name, pos) in enumerate(g.positions.items()):
        assert pos["choice"] == NAMES[int(ck["model"][f"alphas.{i}"].argmax())]
    assert g.plan == _argmax(run).plan and g.seed == 1 and g.step == 6
    # the settings it was read with; argmax reads no kept-out data, so no check against published designs
    assert g.derive["select"] is None and g.derive["methods"] == ["argmax"] and g.derive["against"] == []
    assert g.decision == {}
    d = yaml.safe_load(path.read_text())
    assert {"select", "agreement", "runs", "derive"} <= set(d)
    out = capsys.readouterr()
    assert out.out.strip() == str(path) and out.err.startswith("the search's answer from ") and "conv4.1" in out.err
    # the CLI: --run takes one or more folders, JSON when asked
    assert main(["derive", "--run", str(run), "--out", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["select"] == "argmax"


def test_old_genotype_file_without_provenance_loads(tmp_path):
    g = load_genotype("osnet_ain")
    d = g.to_dict()
    for k in ("select", "agreement", "runs", "derive", "decision"):
        del d[k]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(d))
    old = load_genotype(tmp_path / "old.yaml")
    assert old.plan == g.plan and old.select == "" and old.agreement == {} and old.runs == []
    assert old.derive == {} and old.decision == {}
    assert Genotype(**d).plan == g.plan  # a retrain checkpoint's genotype dict from before the fields


# ----------------------------------------------------------------------------- several runs: the vote
def test_vote_of_hand_set_runs_known_answer(runs, tmp_path):
    """Three runs read by argmax, then per position the candidate most runs chose; a tie goes to
    fewer IN sites, then to the earlier candidate. The probabilities recorded are the runs' mean,
    but they do not decide: a confident minority is outvoted."""
    u = [0.25] * 4
    # per run, per position: probabilities over plain, in_res, in_post, both
    table = [
        # conv2.0: 3/3 in_res   conv2.1: plain, plain, both   conv3.0: in_post, both, plain (1-1-1 tie)
        [[.1, .7, .1, .1], [.5, .2, .2, .1], [.1, .1, .7, .1],
         # conv3.1: two runs weakly in_post, one confidently both (its mean would say both)
         [.2, .2, .4, .2], u, [.1, .35, .3, .25]],
        [[.2, .4, .2, .2], [.4, .3, .2, .1], [.1, .1, .2, .6],
         [.2, .2, .4, .2], u, [.1, .3, .35, .25]],
        [[.3, .4, .2, .1], [.1, .1, .1, .7], [.4, .2, .2, .2],
         # conv4.0: uniform everywhere: each run's argmax is the earlier candidate (plain)
         [.01, .01, .01, .97], u,
         # conv4.1: in_res, in_post, both: the tie between in_res and in_post (one IN site each)
         # goes to the earlier, in_res, not to both (two sites)
         [.1, .1, .1, .7]],
    ]
    hand = [_copy_with_probs(runs[i % 2], tmp_path / f"h{i}", t) for i, t in enumerate(table)]
    g = load_genotype(run_derive(hand, out=tmp_path / "c.yaml"))  # several runs: the vote of their argmaxes
    want = {"conv2.0": ("in_res", 1.0), "conv2.1": ("plain", 2 / 3), "conv3.0": ("plain", 1 / 3),
            "conv3.1": ("in_post", 2 / 3), "conv4.0": ("plain", 1.0), "conv4.1": ("in_res", 1 / 3)}
    assert g.select == "vote" and g.runs == [str(h) for h in hand]
    for p, (choice, agree) in want.items():
        assert g.positions[p]["choice"] == choice, p
        assert g.agreement[p] == pytest.approx(agree, abs=1e-6), p
    i = POSITIONS.index("conv3.1")
    mean = [sum(t[i][j] for t in table) / 3 for j in range(4)]
    assert list(g.positions["conv3.1"]["probs"].values()) == pytest.approx(mean, abs=1e-6)
    assert mean[3] > mean[2]  # the mean probability says both; the vote says in_post
    assert g.positions["conv2.1"]["votes"] == {"plain": 2, "both": 1}
    assert g.positions["conv3.0"]["run_choices"] == ["in_post", "both", "plain"]
    assert g.positions["conv2.0"]["run_select"] == ["argmax"]
    assert g.seed is None and g.step is None and g.sources == ["synth0", "synth1", "synth2"]
    assert g.derive["methods"] == ["argmax"] * 3


def test_vote_of_recorded_runs(runs, tmp_path):
    """Each recorded run's own argmax per position, and their vote (two runs: agreement 1 or 1/2;
    a 1-1 split goes to fewer IN sites, then to the earlier candidate)."""
    g = load_genotype(run_derive(runs, out=tmp_path / "c.yaml"))
    own = [load_run(r).argmax() for r in runs]
    in_sites = [0, 1, 1, 2]
    assert g.select == "vote"
    for i, (p, pos) in enumerate(g.positions.items()):
        a, b = own[0][i], own[1][i]
        assert pos["run_choices"] == [NAMES[a], NAMES[b]]
        assert pos["choice"] == NAMES[a if a == b else min((a, b), key=lambda c: (in_sites[c], c))]
        assert g.agreement[p] == (1.0 if a == b else 0.5)


# ----------------------------------------------------------------------------- perturb: the procedure
def test_remove_candidate_renormalises():
    w = torch.tensor([0.5, 0.25, 0.25])
    assert torch.allclose(remove_candidate(w, 0), torch.tensor([0.0, 0.5, 0.5]))
    assert torch.allclose(remove_candidate(w, 1), torch.tensor([2 / 3, 0.0, 1 / 3]))
    assert torch.allclose(remove_candidate(torch.tensor([1.0, 0.0, 0.0]), 0), torch.tensor([0.0, 0.5, 0.5]))


def _quality_loss(quality, calls=None):
    """loss(weights) = -sum_p log(w_p . q_p): each candidate has a known quality q."""
    def loss(weights):
        if calls is not None:
            calls.append([w.clone() for w in weights])
        return float(-sum(torch.log(w @ torch.tensor(q)) for w, q in zip(weights, quality)))
    return loss


def test_perturb_select_keeps_the_candidate_whose_removal_hurts_most():
    # the probabilities favour candidate 0, the validation loss candidate 2 (pos 0) and 1 (pos 1)
    probs = [torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.tensor([0.5, 0.2, 0.3])]
    quality = [[0.2, 0.3, 0.9, 0.1], [0.1, 0.8, 0.3]]
    calls = []
    res = perturb_select(probs, _quality_loss(quality, calls))
    assert res.chosen == [2, 1] and res.rank == [0, 1]
    # the recorded scores are exactly the loss increases of the removals, position 1 scored
    # with position 0 already fixed to one-hot
    for i in (0, 1):
        for c in range(len(probs[i])):
            w = [remove_candidate(probs[0], c), probs[1]] if i == 0 else \
                [torch.eye(4)[2], remove_candidate(probs[1], c)]
            base = [probs[0], probs[1]] if i == 0 else [torch.eye(4)[2], probs[1]]
            want = _quality_loss(quality)(w) - _quality_loss(quality)(base)
            assert res.scores[i][c] == pytest.approx(want, abs=1e-6)
        assert max(res.scores[i]) == res.scores[i][res.chosen[i]]
    assert all(torch.equal(c[0], torch.eye(4)[2]) for c in calls[5:])  # P * (C + 1) = 5 + 4 calls
    assert len(calls) == 9
    assert perturb_select(probs, _quality_loss(quality)) == res  # deterministic


def test_perturb_select_greedy_order_decides_the_largest_drop_first():
    probs = [torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])]
    quality = [[0.4, 0.6], [0.01, 0.99]]  # position 1 matters far more
    fixed = perturb_select(probs, _quality_loss(quality), order="fixed")
    greedy = perturb_select(probs, _quality_loss(quality), order="greedy")
    assert fixed.chosen == greedy.chosen == [1, 1]
    assert fixed.rank == [0, 1] and greedy.rank == [1, 0]
    with pytest.raises(OsnasError, match="valid: fixed, greedy"):
        perturb_select(probs, _quality_loss(quality), order="random")


def test_perturb_select_ties_go_to_the_larger_probability():
    res = perturb_select([torch.tensor([0.2, 0.5, 0.3])], lambda w: 1.0)  # no removal changes anything
    assert res.scores == [[0.0, 0.0, 0.0]] and res.chosen == [1]


# ----------------------------------------------------------------------------- perturb: on runs
def test_perturb_on_a_recorded_run_records_scores(runs, tmp_path):
    a = run_derive(runs[0], out=tmp_path / "a.yaml", select="perturb", batches=1)
    g = load_genotype(a)
    assert g.select == "perturb" and g.runs == [str(runs[0])] and set(g.agreement.values()) == {1.0}
    assert sorted(v["decided"] for v in g.positions.values()) == list(range(6))
    for p, v in g.positions.items():
        s = v["scores"]
        assert set(s) == set(NAMES) and all(isinstance(x, float) for x in s.values())
        assert s[v["choice"]] == max(s.values())
        assert v["base_loss"] > 0


def test_perturb_scorer_is_deterministic_on_the_runs_alpha_batches(runs):
    """The validation set is the same each time it is built, and so is every loss: with the
    (deterministic) selection logic tested above, perturb gives the same genotype each time."""
    run = load_run(runs[0])
    sc = PerturbScorer(run, batches=2)
    assert sc.objective == "lodo" and len(sc.batches) == 2 * 3  # N per source, each source's alpha stream
    held = [int(b[3][0]) for b in sc.batches]
    assert all(len(set(b[3].tolist())) == 1 for b in sc.batches) and sorted(held) == [0, 0, 1, 1, 2, 2]
    again = PerturbScorer(run, batches=2)
    assert all(torch.equal(x, y) for b, c in zip(sc.batches, again.batches) for x, y in zip(b, c))
    w = [p.clone() for p in run.probs]
    w2 = [w[0]] + [remove_candidate(x, 1) for x in w[1:]]
    assert sc(w) == again(w) and sc(w2) == again(w2) and sc(w) != sc(w2)
    assert sc.model.training is False


def test_perturb_on_a_one_architecture_supernet_agrees_with_argmax(runs, tmp_path, monkeypatch):
    """One-hot alphas and a validation loss that is smallest at that architecture (the distance
    of the supernet's features to those of the one-hot network): removing a candidate that
    carries no weight changes nothing (score 0), removing the chosen one hurts."""
    want = ["in_res", "in_res", "plain", "both", "in_post", "plain"]
    probs = [[1e-6] * 4 for _ in want]
    for p, c in zip(probs, want):
        p[NAMES.index(c)] = 1 - 3e-6
    run = _copy_with_probs(runs[1], tmp_path / "onehot", probs)
    ck = torch.load(run / "checkpoint.pth", weights_only=True)
    ref = Supernet(load_run(run).space, arch="osnet_x0_25",
                   num_classes=ck["model"]["net.head.classifier.weight"].shape[0])
    ref.load_state_dict(ck["model"])
    target = ref.onehot(dict(zip(POSITIONS, want)))
    import osnas.search.bilevel as bilevel

    cache = {}  # the one-hot network's features, per batch

    def feature_distance(kind, label_smooth, margin):
        def loss_fn(model, batch):
            key = batch[0].data_ptr()
            if key not in cache:
                with scoring_mode(ref):
                    cache[key] = ref(batch[0], target)[1]
            return ((model(batch[0])[1] - cache[key]) ** 2).mean()
        return loss_fn

    monkeypatch.setattr(bilevel, "make_loss_fn", feature_distance)
    g = load_genotype(run_derive(run, out=tmp_path / "g.yaml", select="perturb", batches=1))
    assert g.plan == _argmax(run).plan
    for p, c in zip(POSITIONS, want):
        s = g.positions[p]["scores"]
        assert s[c] > 1e-6 and all(abs(v) < 1e-6 for k, v in s.items() if k != c), (p, s)


def test_perturb_several_runs_vote(runs, tmp_path, monkeypatch):
    """perturb per run, then the vote; a tie goes to fewer IN sites, then to the earlier
    candidate (the probabilities do not break it)."""
    import osnas.derive.perturb as derive_perturb

    a = _copy_with_probs(runs[0], tmp_path / "a", [[.1, .2, .3, .4]] * 6)
    b = _copy_with_probs(runs[1], tmp_path / "b", [[.1, .2, .3, .4]] * 6)
    c = _copy_with_probs(runs[0], tmp_path / "c", [[.4, .3, .2, .1]] * 6)
    # per run, its perturb choice per position (hand-made results: the vote is what is tested)
    picks = {"a": [0, 1, 3, 2, 0, 0], "b": [0, 1, 2, 1, 1, 3], "c": [0, 2, 3, 0, 2, 2]}

    def fake(run, batches, order, data_root, device):
        ch = picks[run.path.name]
        return PerturbResult(ch, [[float(j == x) for j in range(4)] for x in ch], [1.0] * 6, list(range(6)))

    monkeypatch.setattr(derive_perturb, "perturb_run", fake)
    g = load_genotype(run_derive([a, b, c], out=tmp_path / "v.yaml", select="perturb"))
    # 3/3 plain; 2/3 in_res; 2/3 both; then three 1-1-1 ties, each won by plain (no IN site)
    assert [g.positions[p]["choice"] for p in POSITIONS] == ["plain", "in_res", "both", "plain", "plain", "plain"]
    assert [g.agreement[p] for p in POSITIONS] == pytest.approx([1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert g.select == "vote" and g.positions["conv2.0"]["run_select"] == ["perturb"]
    assert g.positions["conv2.1"]["votes"] == {"in_res": 2, "in_post": 1}
    assert g.positions["conv3.1"]["run_choices"] == ["in_post", "in_res", "plain"]
    # a 1-1 vote of two runs: fewer IN sites (a and b both prefer `both` by probability: no matter)
    picks.update({"a": [3] * 6, "b": [0] * 6})
    g = load_genotype(run_derive([a, b], out=tmp_path / "t.yaml", select="perturb"))
    assert {v["choice"] for v in g.positions.values()} == {"plain"} and set(g.agreement.values()) == {0.5}
    # in_post and in_res, one IN site each: the earlier candidate
    picks.update({"a": [2] * 6, "b": [1] * 6})
    g = load_genotype(run_derive([a, b], out=tmp_path / "u.yaml", select="perturb"))
    assert {v["choice"] for v in g.positions.values()} == {"in_res"}


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_give_one_line_errors(runs, tmp_path, capsys):
    run = runs[0]
    line = _one_line_error(["derive", "--run", run, "--select", "best"], capsys)
    assert "'best'" in line and "argmax, perturb, retrieval, retrieval-pooled" in line
    for removed in ("consensus", "vote"):  # several runs are always combined by vote
        line = _one_line_error(["derive", "--run", run, runs[1], "--select", removed, "--out", tmp_path / "x.yaml"],
                               capsys)
        assert f"--select {removed} was removed" in line and "by vote" in line
    not_search = tmp_path / "rt"
    not_search.mkdir()
    (not_search / "run.json").write_text(json.dumps({"stage": "retrain"}))
    assert str(not_search) in _one_line_error(["derive", "--run", not_search], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_line_error(["derive", "--run", run, empty, "--out", tmp_path / "x.yaml"], capsys)
    assert str(empty / "checkpoint.pth") in line and "not found" in line
    # a run of another space (its space file and checkpoint hash changed together)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "space.yaml").write_text((other / "space.yaml").read_text() + "\n# another space\n")
    from osnas.models.space import load_space

    ck = torch.load(other / "checkpoint.pth", weights_only=True)
    ck["space_sha256"] = load_space(other / "space.yaml").sha256
    torch.save(ck, other / "checkpoint.pth")
    line = _one_line_error(["derive", "--run", run, other, "--out", tmp_path / "x.yaml"], capsys)
    assert "different spaces" in line and str(run) in line and str(other) in line
    assert "--out" in _one_line_error(["derive", "--run", run, runs[1]], capsys)
    # the settings of other selections, refused before any scoring
    assert "--gate is a setting of the retrieval selections" in _one_line_error(
        ["derive", "--run", run, "--select", "argmax", "--gate", "1", "--out", tmp_path / "x.yaml"], capsys)
    assert "--order is a setting of --select perturb" in _one_line_error(
        ["derive", "--run", run, "--order", "greedy", "--out", tmp_path / "x.yaml"], capsys)
    assert "unknown perturb order 'best'" in _one_line_error(
        ["derive", "--run", run, "--select", "perturb", "--order", "best", "--out", tmp_path / "x.yaml"], capsys)
    assert "--batches" in _one_line_error(["derive", "--run", run, "--select", "perturb", "--batches", "0",
                                           "--out", tmp_path / "x.yaml"], capsys)
    no_cfg = tmp_path / "nocfg"
    shutil.copytree(run, no_cfg)
    (no_cfg / "config.yaml").unlink()
    assert str(no_cfg / "config.yaml") in _one_line_error(["derive", "--run", no_cfg, "--select", "perturb",
                                                           "--out", tmp_path / "x.yaml"], capsys)
    assert not (tmp_path / "x.yaml").exists()
