"""The last pass of `osnas derive`: the searched answer against the published designs
(osnas/derive/decide.py), and the derive options that are refused before any scoring.

`check_published` is checked on hand-made per-unit scores with a known verdict; `run_derive` on
a tiny recorded run whose supernet's scores are replaced by hand-made ones (the genotype file,
the search's own answer beside it, the printout); the option errors through the command line.
"""

import pytest
import torch

from conftest import TINY
from osnas.cli import main
from osnas.derive import run_derive
from osnas.derive.decide import check_published, published_paths
from osnas.derive.options import PUBLISHED
from osnas.errors import OsnasError
from osnas.models.genotype import NAMED, genotype_from_probs, load_genotype
from osnas.models.space import load_space
from osnas.search import run_search

GATE = 2.0


@pytest.fixture(scope="module")
def space():
    return load_space("osnet_stem_blocks")


def _path(space, choices):
    """Candidate index per position of {position: candidate} (positions not named: the simplest)."""
    return [p.names.index(choices.get(p.name, p.names[p.simplest])) for p in space.positions]


def _design(space, name):
    return _path(space, space.choices_for(NAMED[name]))


def _answer(space, choices):
    """A searched genotype of `choices` as one run's retrieval selection gives it."""
    probs = [torch.full((len(p.names),), 1 / len(p.names)) for p in space.positions]
    return genotype_from_probs(space, probs, chosen=_path(space, choices), select="retrieval-pooled", runs=["r"],
                               agreement={p.name: 1.0 for p in space.positions}, name=f"searched-{space.name}")


def _units(space, offsets, base=0.5):
    """A per-unit score function: path -> [base + offset unit by unit], offsets[design or 'other']."""
    def score(path):
        for name in ("osnet", "osnet_ibn", "osnet_ain"):
            if path == _design(space, name):
                return [base + o for o in offsets[name]]
        return [base + o for o in offsets["other"]]
    return score


ANSWER = {"stem": "in", "conv3.0": "in_res"}  # no published design
FLAT = [0.0] * 8


def test_the_published_designs_a_space_can_express(space):
    assert space.choices_for(NAMED["osnet"]) == {p.name: p.names[p.simplest] for p in space.positions}
    assert space.choices_for(NAMED["osnet_ain"]) == {"stem": "in", "conv2.0": "in_res", "conv2.1": "in_res",
                                                     "conv3.0": "plain", "conv3.1": "in_res", "conv4.0": "in_res",
                                                     "conv4.1": "plain"}
    assert space.choices_for(NAMED["osnet_ibn"])["conv2.0"] == "in_post"
    assert list(published_paths(space, PUBLISHED)) == ["osnet", "osnet_ibn", "osnet_ain"]
    ain_blocks = load_space("osnet_ain_blocks")  # the stem is fixed to IN: plain OSNet is not in it
    assert ain_blocks.choices_for(NAMED["osnet"]) is None
    assert list(published_paths(ain_blocks, PUBLISHED)) == ["osnet_ibn", "osnet_ain"]
    assert space.choices_for({**NAMED["osnet"], "conv5": "in"}) is None  # a site outside the positions differs


def test_an_answer_beyond_the_gate_is_kept(space):
    offsets = {"osnet": FLAT, "osnet_ibn": [0.01, 0.0] * 4, "osnet_ain": [0.02, 0.01] * 4,
               "other": [0.06, 0.04] * 4}  # the answer: +0.035 over OSNet-AIN, z about 18
    g = _answer(space, ANSWER)
    out = check_published(g, space, [_units(space, offsets)], PUBLISHED, GATE)
    d = out.decision
    assert d["verdict"] == "searched" and d["recommended"] == "searched" and d["best_published"] == "osnet_ain"
    assert d["difference"] == pytest.approx(0.035) and d["z"] > GATE and d["units"] == 8 and d["gate_se"] == GATE
    assert d["scores"] == pytest.approx({"searched": 0.55, "osnet": 0.5, "osnet_ibn": 0.505, "osnet_ain": 0.515})
    assert d["searched"] == {p.name: ANSWER.get(p.name, p.names[p.simplest]) for p in space.positions}
    assert d["searched_in_sites"] == g.in_sites() and "beats osnet_ain" in d["why"]
    assert out.plan == g.plan and out.positions == g.positions and out.name == g.name


def test_an_answer_within_the_noise_gives_way_to_the_best_published_design(space):
    """+0.001 +- 0.0035 over OSNet-AIN: inside the noise, so OSNet-AIN is recommended: its choices
    replace the answer's, its name is the genotype's, and the search's own answer is recorded.
    Several runs' units are pooled, run by run; the agreement is each run's own answer's."""
    offsets = {"osnet": FLAT, "osnet_ibn": [0.01, 0.0] * 4, "osnet_ain": [0.02, 0.01] * 4,
               "other": [0.03, 0.002] * 4}
    g = _answer(space, ANSWER)
    own = [[ANSWER.get(p.name, p.names[p.simplest]) for p in space.positions],
           [space.choices_for(NAMED["osnet_ain"])[p.name] for p in space.positions]]
    out = check_published(g, space, [_units(space, offsets)] * 2, PUBLISHED, GATE, own)
    d = out.decision
    assert d["verdict"] == "published" and d["recommended"] == "osnet_ain" and d["units"] == 16
    assert 0 < d["z"] <= GATE and "does not beat osnet_ain beyond the noise" in d["why"]
    assert out.name == "osnet_ain" and out.plan == NAMED["osnet_ain"]
    assert {k: v["choice"] for k, v in out.positions.items()} == space.choices_for(NAMED["osnet_ain"])
    assert d["searched"] == dict(zip([p.name for p in space.positions], own[0]))
    # agreement: the share of the runs whose own choice is the design's
    assert out.agreement["conv2.0"] == 0.5 and out.agreement["conv4.1"] == 1.0 and out.agreement["conv3.0"] == 0.5
    # the recorded probabilities stay the search's
    assert all(out.positions[k]["probs"] == g.positions[k]["probs"] for k in g.positions)
    # the same answer with a gate of 0: any positive edge keeps it
    assert check_published(g, space, [_units(space, offsets)], PUBLISHED, 0.0).decision["verdict"] == "searched"


def test_an_answer_that_is_a_published_design_says_which(space):
    """The answer is OSNet-IBN and OSNet-IBN scores best: that is the design, by its name. Where
    another published design scores better, the answer is held to it like any other."""
    ibn = space.choices_for(NAMED["osnet_ibn"])
    offsets = {"osnet": FLAT, "osnet_ibn": [0.05, 0.04] * 4, "osnet_ain": [0.01, 0.0] * 4, "other": FLAT}
    out = check_published(_answer(space, ibn), space, [_units(space, offsets)], PUBLISHED, GATE)
    d = out.decision
    assert d["verdict"] == "searched" and d["recommended"] == "osnet_ibn" and "is osnet_ibn" in d["why"]
    assert out.name == "osnet_ibn" and out.plan == NAMED["osnet_ibn"] and d["best_published"] == "osnet_ibn"
    assert d["difference"] == 0 and set(d["versus"]) == set(PUBLISHED)
    offsets["osnet_ain"] = [0.07, 0.06] * 4  # OSNet-AIN now better than the answer by far
    out = check_published(_answer(space, ibn), space, [_units(space, offsets)], PUBLISHED, GATE)
    assert out.decision["verdict"] == "published" and out.name == "osnet_ain" and out.plan == NAMED["osnet_ain"]
    assert out.decision["z"] < 0 and out.decision["searched"] == ibn


def test_a_space_without_any_published_design_records_so(tmp_path):
    f = tmp_path / "in_head.yaml"  # conv5 fixed to IN: no published design has that
    f.write_text("name: in_head\nfixed: {conv5: in}\npositions:\n  - {site: stem, candidates: [bn, in]}\n")
    s = load_space(f)
    assert published_paths(s, PUBLISHED) == {}
    g = _answer(s, {"stem": "in"})
    calls = []
    out = check_published(g, s, [lambda path: calls.append(path) or [0.5, 0.6]], PUBLISHED, GATE)
    assert out.decision == {"verdict": "no published design in this space", "against": list(PUBLISHED)}
    assert out.plan == g.plan and calls == []  # nothing scored
    # only the designs asked about count: OSNet alone is not in osnet_ain_blocks
    ain = load_space("osnet_ain_blocks")
    out = check_published(_answer(ain, {}), ain, [lambda path: [0.5, 0.6]], ("osnet",), GATE)
    assert out.decision["verdict"] == "no published design in this space"


# ----------------------------------------------------------------------------- through derive
@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    """A tiny one-supernet search with the default recipe (read by retrieval-pooled)."""
    out = tmp_path_factory.mktemp("decide") / "search"
    return run_search(data_root=str(synth_root), out=str(out),
                      overrides=TINY + ["search.epochs=2", "search.steps_per_epoch=2", "search.warmup_epochs=1",
                                        "search.runs=1"])


class _Halves:
    """A stand-in SubnetScorer: on half 0 (the selection) IN at conv3.0 is a clear gain
    (t about 5); on half 1 (the check) `check(space, path)` gives the units."""

    check = None  # set by the `halves` fixture
    made: list = []

    def __init__(self, run, batches=4, data_root=None, device="auto", gallery="batch", half=None, loaded=None):
        self.space, self.gallery, self.half, self.loaded = run.space, gallery, half, None
        self.made.append((gallery, half, batches))

    def release(self):
        pass

    def per_batch(self, path):
        if self.half == 1:
            return self.check(self.space, path)
        i = [p.name for p in self.space.positions].index("conv3.0")
        gain = [0.03, 0.01] * 4 if self.space.positions[i].in_counts[path[i]] else [0.0] * 8
        return [0.5 + g for g in gain]


@pytest.fixture
def halves(monkeypatch):
    import osnas.derive as D

    monkeypatch.setattr(_Halves, "made", [])
    # by default the check's units are the same for every path: nothing beats anything
    monkeypatch.setattr(_Halves, "check", staticmethod(lambda space, path: [0.5 + 0.01 * k for k in range(8)]))
    monkeypatch.setattr(D, "SubnetScorer", _Halves)
    return _Halves


def test_derive_writes_the_published_design_and_the_searched_answer_beside_it(run, halves, tmp_path, capsys):
    """The check's units cannot tell any path apart: the answer (IN at conv3.0) does not beat the
    published designs, so the best of them (all equal: the first, OSNet) is the genotype file; the
    search's own answer goes to FILE.searched.yaml, and the printout says why."""
    capsys.readouterr()
    path = run_derive(run, out=tmp_path / "g.yaml", batches=3)
    assert halves.made == [("pooled", 0, 3), ("pooled", 1, 3)]  # choose on half 0, check on half 1
    g = load_genotype(path)
    assert g.decision["verdict"] == "published" and g.decision["recommended"] == "osnet"
    assert g.name == "osnet" and g.plan == NAMED["osnet"] and g.select == "retrieval-pooled"
    assert g.decision["searched"]["conv3.0"] == "in_res" and g.decision["z"] == 0
    assert g.derive["against"] == list(PUBLISHED) and g.derive["gate"] == GATE and g.derive["batches"] == 3
    own = load_genotype(tmp_path / "g.searched.yaml")
    assert own.positions["conv3.0"]["choice"] == "in_res" and own.in_sites() == ["conv3.0.end"]
    assert own.decision["verdict"] == "searched (not recommended)"
    err = capsys.readouterr().err
    progress, summary = err.split("the search's answer from ", 1)  # progress lines first, then the summary
    assert progress.startswith("osnas derive: run 1/1 read by retrieval-pooled (")
    assert "osnas derive: checked against osnet, osnet_ibn, osnet_ain (" in progress
    assert "the search's answer has IN at: conv3.0.end" in err
    assert "recommended: osnet (a published design): the searched answer does not beat osnet" in err
    assert f"the search's own answer: {tmp_path / 'g.searched.yaml'}" in err


def test_derive_keeps_an_answer_that_beats_them_and_can_skip_the_check(run, halves, tmp_path, capsys, monkeypatch):
    conv3 = [p.name for p in load_space("osnet_stem_blocks").positions].index("conv3.0")
    monkeypatch.setattr(halves, "check", staticmethod(  # conv3.0 in_res wins on half 1 too
        lambda space, path: [0.5 + (0.05 if k % 2 else 0.03) * (path[conv3] == 1) for k in range(8)]))
    g = load_genotype(run_derive(run, out=tmp_path / "g.yaml", batches=3))
    assert g.decision["verdict"] == "searched" and g.decision["best_published"] == "osnet"
    assert g.positions["conv3.0"]["choice"] == "in_res" and g.name.startswith("searched-")
    assert not (tmp_path / "g.searched.yaml").exists()
    assert "recommended: searched: the searched answer beats osnet" in capsys.readouterr().err
    halves.made.clear()
    none = load_genotype(run_derive(run, out=tmp_path / "n.yaml", batches=3, against=()))
    assert none.decision == {} and none.derive["against"] == [] and halves.made == [("pooled", 0, 3)]
    halves.made.clear()
    assert main(["derive", "--run", str(run), "--batches", "3", "--against", "none", "--out",
                 str(tmp_path / "c.yaml")]) == 0
    assert load_genotype(tmp_path / "c.yaml").decision == {} and len(halves.made) == 1
    assert main(["derive", "--run", str(run), "--batches", "3", "--against", "osnet_ain", "--out",
                 str(tmp_path / "a.yaml")]) == 0
    d = load_genotype(tmp_path / "a.yaml").decision
    assert d["against"] == ["osnet_ain"] and set(d["scores"]) == {"searched", "osnet_ain"}


# ----------------------------------------------------------------------------- options refused before any scoring
def _one_line(args, capsys):
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("osnas: error: "), err
    return err[0]


@pytest.mark.parametrize("args,needle", [
    (["--against", "osnet,foo"], "--against osnet,foo: unknown design 'foo'; valid: osnet, osnet_ibn, osnet_ain"),
    (["--order", "greedy"], "--order is a setting of --select perturb, not of retrieval-pooled"),
    (["--select", "retrieval", "--order", "greedy"], "--order is a setting of --select perturb, not of retrieval"),
    (["--select", "consensus"], "--select consensus was removed: several runs are combined by vote"),
    (["--select", "vote"], "--select vote was removed"),
    (["--select", "argmax", "--against", "osnet"], "--against is a setting of the retrieval selections"),
    (["--select", "perturb", "--stem-first"], "--stem-first is a setting of the retrieval selections"),
    (["--batches", "0"], "--batches must be >= 1, got 0"),
    (["--gate", "-1"], "--gate -1.0: expected a number of standard errors >= 0"),
    (["--cost-table", "proxy", "--cost-budget", "0.5"], "--cost-budget=0.5 is below the cheapest architecture"),
])
def test_bad_options_are_refused_before_any_scoring(run, tmp_path, capsys, monkeypatch, args, needle):
    import osnas.derive as D

    def never(*a, **k):
        raise AssertionError("scored before the options were checked")

    monkeypatch.setattr(D, "SubnetScorer", never)
    monkeypatch.setattr(D, "select_perturb", never)
    assert needle in _one_line(["derive", "--run", run, "--out", tmp_path / "g.yaml", *args], capsys)
    assert not (tmp_path / "g.yaml").exists()


def test_the_settings_objects_own_errors():
    from osnas.derive import DeriveConfig
    from osnas.derive.options import check_against, check_gate

    assert check_against("none") == () and check_against("osnet_ain, osnet,osnet_ain") == ("osnet_ain", "osnet")
    assert check_gate(0) == 0.0 and check_gate("1.5") == 1.5
    for bad in (float("nan"), float("inf"), "x"):
        with pytest.raises(OsnasError, match="--gate"):
            check_gate(bad)
    with pytest.raises(OsnasError, match="derive: "):
        run_derive("nowhere", cfg=None, selct="argmax")  # a misspelt setting: one line, not a TypeError
    assert DeriveConfig(batches=3).batches_for("perturb") == 3 and DeriveConfig().batches_for("perturb") == 4
