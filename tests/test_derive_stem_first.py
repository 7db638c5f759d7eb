"""`osnas derive --stem-first`: a run's block IN site moves to the stem where that costs no more
than the gate.

The move is checked on hand-made scores with a known answer (`move_to_stem`), then through
derive on a tiny recorded uniform search of the space with the stem, its supernet's scores
replaced by the same hand-made ones: the record in the genotype file, the summary, the vote's
per-run records, and the one-line errors where the option has no meaning. The check against the
published designs, a later pass of derive, is left out here (`against=()`, `--against none`):
test_derive_decide.py covers it.
"""

import pytest

from conftest import TINY
from osnas.cli import main
from osnas.derive import load_run, run_derive
from osnas.derive.moves import move_to_stem, stem_index
from osnas.errors import OsnasError
from osnas.models.genotype import load_genotype
from osnas.models.space import load_space
from osnas.search import run_search

SEARCH = TINY + ["search.epochs=2", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=1"]
UNIFORM = ["search.weight_step=uniform", "search.objective=unseen"]

# per-unit score effects (8 units, paired): IN in conv3.0 is clear of the gate (+0.02, t = 5.3);
# IN in the stem alone is noise (+0.01, t = 0.9); the stem instead of conv3.0 costs -0.01 at t = -1.3,
# inside a gate of 2 and outside a gate of 1
BLOCK = [0.03, 0.01] * 4
STEM = [0.04, -0.02] * 4


def score(space, path):
    """0.5 plus one appearance effect: conv3.0's where it holds IN, else the stem's where it does."""
    names = [p.name for p in space.positions]
    if space.positions[names.index("conv3.0")].in_counts[path[names.index("conv3.0")]]:
        return [0.5 + e for e in BLOCK]
    if space.positions[0].in_counts[path[0]]:
        return [0.5 + e for e in STEM]
    return [0.5] * len(BLOCK)


@pytest.fixture(scope="module")
def space():
    return load_space("osnet_stem_blocks")


@pytest.fixture(scope="module")
def stem_run(synth_root, tmp_path_factory):
    """A tiny uniform search (unseen source kept out) of the space with the stem, on synth0..2."""
    out = tmp_path_factory.mktemp("stem-first") / "uniform"
    return run_search(data_root=str(synth_root), out=str(out), space="osnet_stem_blocks",
                      overrides=SEARCH + UNIFORM + ["run.seed=1"])


@pytest.fixture
def fake_scores(monkeypatch):
    """SubnetScorer replaced by `score`: derive then sees the hand-made effects above."""
    import osnas.derive as D

    class Fake:
        def __init__(self, run, batches, data_root, device, gallery="batch", half=None):
            self.space, self.gallery = run.space, gallery

        def release(self):  # derive frees a scorer's kept activations after use
            pass

        def per_batch(self, path):
            return score(self.space, path)

        def __call__(self, path):
            return sum(self.per_batch(path)) / len(BLOCK)

    monkeypatch.setattr(D, "SubnetScorer", Fake)


def plain_with(space, **sites):
    return [p.names.index(sites.get(p.name.replace(".", "_"), p.names[p.simplest])) for p in space.positions]


def test_a_block_site_moves_to_the_stem_inside_the_gate_and_stays_outside_it(space):
    answer = plain_with(space, conv3_0="in_res")
    moved, rec = move_to_stem(lambda p: score(space, p), space, answer, z=2.0)
    assert moved == plain_with(space, stem="in")
    assert rec["moved_from"] == "conv3.0" and rec["tried"]["conv3.0"] == pytest.approx(-1.32, abs=0.01)
    kept, rec1 = move_to_stem(lambda p: score(space, p), space, answer, z=1.0)
    assert kept == answer and rec1["moved_from"] is None and rec1["gate_se"] == 1.0
    assert rec1["tried"] == rec["tried"]


def test_the_move_takes_the_best_site_and_leaves_an_in_stem_or_no_in_alone(space):
    def two_sites(path):  # dropping conv4.1 costs a lot, dropping conv3.0 nothing
        base = [0.5] * 8
        i31, i41 = (next(i for i, p in enumerate(space.positions) if p.name == n) for n in ("conv3.0", "conv4.1"))
        gain41 = [0.05, 0.03] * 4 if path[i41] else [0.0] * 8
        noise31 = [0.01, -0.012] * 4 if path[i31] else [0.0] * 8  # mean -0.001: conv3.0 buys nothing
        return [b + g + n for b, g, n in zip(base, gain41, noise31)]

    answer = plain_with(space, conv3_0="in_post", conv4_1="both")
    moved, rec = move_to_stem(two_sites, space, answer, z=2.0)
    assert moved == plain_with(space, stem="in", conv4_1="both") and rec["moved_from"] == "conv3.0"
    assert set(rec["tried"]) == {"conv3.0", "conv4.1"} and rec["tried"]["conv4.1"] < -2
    for untouched in (plain_with(space, stem="in", conv3_0="in_res"), plain_with(space)):
        path, rec = move_to_stem(lambda p: 1 / 0, space, untouched, z=2.0)  # nothing is scored
        assert path == untouched and rec == {"tried": {}, "moved_from": None, "gate_se": 2.0}


def test_a_space_without_a_searched_stem_is_a_clear_error():
    with pytest.raises(OsnasError, match="does not search the stem"):
        stem_index(load_space("osnet_ain_blocks"))


def test_derive_records_the_move_and_the_summary_says_it(stem_run, fake_scores, tmp_path, capsys):
    plain = load_genotype(run_derive(stem_run, out=tmp_path / "plain.yaml", against=()))
    assert plain.select == "retrieval-pooled" and plain.in_sites() and "stem_first" not in plain.positions["stem"]
    assert plain.positions["stem"]["choice"] == "bn" and plain.positions["conv3.0"]["choice"] != "plain"
    capsys.readouterr()
    assert main(["derive", "--run", str(stem_run), "--stem-first", "--against", "none",
                 "--out", str(tmp_path / "first.yaml")]) == 0
    assert "IN moved here from conv3.0 (--stem-first: -1.3 SE, gate 2)" in capsys.readouterr().err
    g = load_genotype(tmp_path / "first.yaml")
    assert g.positions["stem"]["choice"] == "in" and g.positions["conv3.0"]["choice"] == "plain"
    assert g.positions["stem"]["stem_first"]["moved_from"] == "conv3.0" and g.derive["stem_first"] is True
    assert g.agreement["stem"] == 1.0 and g.agreement["conv3.0"] == 1.0  # one run: its own answer
    # the scores describe the point after the move: conv3.0's plain candidate is the stem-IN path's score
    assert g.positions["conv3.0"]["scores"]["plain"] == pytest.approx(0.5 + sum(STEM) / 8)
    kept = load_genotype(run_derive(stem_run, out=tmp_path / "kept.yaml", gate=1.0, stem_first=True, against=()))
    assert kept.positions["stem"]["choice"] == "bn" and kept.positions["stem"]["stem_first"]["moved_from"] is None


def test_a_vote_keeps_each_runs_move(stem_run, fake_scores, tmp_path, capsys):
    assert main(["derive", "--run", str(stem_run), str(stem_run), str(stem_run), "--stem-first", "--against", "none",
                 "--out", str(tmp_path / "v.yaml")]) == 0
    err = capsys.readouterr().err
    assert err.count("stem first:") == 3 and "IN moved from conv3.0 to the stem" in err
    g = load_genotype(tmp_path / "v.yaml")
    assert g.select == "vote" and g.positions["stem"]["choice"] == "in"
    assert g.positions["stem"]["run_choices"] == ["in"] * 3
    assert [r["moved_from"] for r in g.positions["stem"]["run_stem_first"]] == ["conv3.0"] * 3
    assert "run_stem_first" not in g.positions["conv3.0"]


def test_stem_first_with_a_selection_that_has_no_move_is_a_one_line_error(stem_run, tmp_path, capsys):
    out = tmp_path / "bad.yaml"
    assert main(["derive", "--run", str(stem_run), "--stem-first", "--out", str(out), "--select", "perturb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stem-first is a setting of the retrieval selections" in err[0]
    assert "not of perturb" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_stem_first_on_a_space_without_the_stem_is_a_one_line_error(synth_root, tmp_path, capsys):
    run = run_search(data_root=str(synth_root), out=str(tmp_path / "ain"),
                     overrides=SEARCH + UNIFORM + ["search.space=osnet_ain_blocks"])
    assert load_run(run).space.name == "osnet_ain_blocks"
    capsys.readouterr()  # the search's own log
    assert main(["derive", "--run", str(run), "--stem-first", "--out", str(tmp_path / "g.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not search the stem" in err[0]
    assert not (tmp_path / "g.yaml").exists()
