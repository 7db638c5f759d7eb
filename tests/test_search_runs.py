"""`osnas search` with several supernets (`search.runs`): the run folder, the unseen rotation,
derive's vote over them, and resuming a search stopped between or inside its supernets.

One tiny two-supernet search on synth0..2 (three sources: the objective `auto` is `unseen`) is
made once for the module; it is also the uninterrupted reference of the resume test.
"""

import json

import pytest
import torch
import yaml

from conftest import TINY
from osnas.cli import main
from osnas.config import build_config
from osnas.derive import run_derive
from osnas.errors import OsnasError, OsnasInterrupted
from osnas.models.genotype import load_genotype
from osnas.models.space import load_space
from osnas.search import read_history, run_search
from osnas.search.supernets import supernet_configs
from osnas.utils import load_checkpoint

SEARCH = TINY + ["search.epochs=3", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=2"]
STEPS = 6  # per supernet


def _sets(items):
    return [x for s in items for x in ("--set", s)]


@pytest.fixture(scope="module")
def two(synth_root, tmp_path_factory):
    """A search of two supernets through the command line (`--runs 2` over search.runs=1)."""
    out = tmp_path_factory.mktemp("runs") / "search"
    over = [s for s in SEARCH if s != "search.runs=2"]
    assert main(["search", "--data-root", str(synth_root), "--out", str(out), "--runs", "2"] + _sets(over)) == 0
    return out


def test_the_run_folder_lists_its_supernets_each_a_complete_search(two):
    info = json.loads((two / "run.json").read_text())
    assert info["stage"] == "search" and info["supernets"] == ["supernet1", "supernet2"] and info["runs"] == 2
    assert info["seeds"] == [1, 2] and info["objective"] == "unseen"
    assert yaml.safe_load((two / "config.yaml").read_text())["search"]["runs"] == 2  # the whole search's settings
    assert not (two / "checkpoint.pth").exists()  # the supernets' own files are in their folders
    for k, sub in enumerate((two / "supernet1", two / "supernet2"), 1):
        for f in ("config.yaml", "space.yaml", "run.json", "alphas.jsonl", "checkpoint.pth", "final_alphas.json"):
            assert (sub / f).is_file(), (sub, f)
        cfg = yaml.safe_load((sub / "config.yaml").read_text())
        assert cfg["run"]["seed"] == k and cfg["search"]["runs"] == 1
        assert len(read_history(sub)) == STEPS
        assert load_checkpoint(sub / "checkpoint.pth")["seed"] == k
    assert read_history(two / "supernet1") != read_history(two / "supernet2")


def test_each_supernet_keeps_another_source_out(two):
    """Supernet k keeps out the k-th source from the last: supernet1 synth2, supernet2 synth1."""
    kept = [json.loads((two / f"supernet{k}" / "run.json").read_text())["unseen_domain"] for k in (1, 2)]
    assert kept == ["synth2", "synth1"]
    assert json.loads((two / "run.json").read_text())["unseen_domains"] == kept
    assert [yaml.safe_load((two / f"supernet{k}" / "config.yaml").read_text())["search"]["unseen_domain"]
            for k in (1, 2)] == kept


def test_the_supernets_settings():
    """Seeds run.seed + k - 1; the unseen source rotates from the last, round again after the
    last source; a source named by search.unseen_domain, or an objective without one, is left as
    it is."""
    cfg = build_config(overrides=["search.runs=4", "run.seed=7", "data.sources=[a,b,c]"])
    cs = supernet_configs(cfg)
    assert [c.run.seed for c in cs] == [7, 8, 9, 10] and {c.search.runs for c in cs} == {1}
    assert [c.search.unseen_domain for c in cs] == ["c", "b", "a", "c"]
    assert cfg.search.runs == 4 and cfg.search.unseen_domain == ""  # the search's own settings untouched
    fixed = supernet_configs(build_config(overrides=["search.runs=2", "search.unseen_domain=a",
                                                     "data.sources=[a,b,c]"]))
    assert [c.search.unseen_domain for c in fixed] == ["a", "a"]
    two = supernet_configs(build_config(overrides=["search.runs=3", "data.sources=[a,b]"]))  # auto: unseen
    assert [c.search.unseen_domain for c in two] == ["b", "a", "b"]
    for other in (["search.objective=lodo", "data.sources=[a,b,c]"], ["search.objective=identities",
                                                                      "data.sources=[a,b]"]):
        assert [c.search.unseen_domain for c in supernet_configs(build_config(overrides=["search.runs=2"] + other))] \
            == ["", ""]


def test_derive_on_the_search_folder_votes_over_its_supernets(two, tmp_path, capsys):
    """`osnas derive --run RUN`: each supernet read alone (retrieval-pooled: they were judged on a
    source their weights never saw), then the vote; each one's own answer is what deriving it
    alone gives."""
    own = [load_genotype(run_derive(two / f"supernet{k}", out=tmp_path / f"own{k}.yaml", batches=2, against=()))
           for k in (1, 2)]
    capsys.readouterr()
    assert main(["derive", "--run", str(two), "--batches", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(two / "genotype.yaml")
    assert "select vote" in out.err and "the runs' own choices" in out.err
    g = load_genotype(two / "genotype.yaml")
    assert g.select == "vote" and g.runs == [str(two / "supernet1"), str(two / "supernet2")]
    assert g.derive["methods"] == ["retrieval-pooled"] * 2 and g.seed is None
    searched = g.decision["searched"] if g.decision["verdict"] == "published" else \
        {p: v["choice"] for p, v in g.positions.items()}
    for p in load_space(two / "supernet1" / "space.yaml").positions:
        v = g.positions[p.name]
        mine = [o.positions[p.name]["choice"] for o in own]
        assert v["run_choices"] == mine
        a, b = (p.names.index(c) for c in mine)
        want = mine[0] if a == b else p.names[min((a, b), key=lambda c: (p.in_counts[c], c))]
        assert searched[p.name] == want, p.name
        assert g.agreement[p.name] == pytest.approx(mine.count(v["choice"]) / 2)
    assert g.decision["verdict"] in ("searched", "published")
    assert (two / "genotype.searched.yaml").is_file() == (g.decision["verdict"] == "published")
    # a genotype file must be named for several --run folders, not for one folder of several supernets
    assert main(["derive", "--run", str(two / "supernet1"), str(two / "supernet2"), "--batches", "2"]) == 2


def test_a_stopped_search_resumes_only_its_unfinished_supernet(two, synth_root, tmp_path, monkeypatch, capsys):
    """Stopped in supernet2's fourth step (as Ctrl-C stops it): supernet1 is finished and stays
    as it is; --resume continues supernet2 from its checkpoint and ends where the uninterrupted
    search ended, bit for bit."""
    from osnas import session

    check, calls = session.TrainingSession.check, [0]

    def stop_in_supernet2(self, loss, where):
        value = check(self, loss, where)
        calls[0] += 1
        self.stop_requested = self.stop_requested or calls[0] == STEPS + 4
        return value

    out = tmp_path / "search"
    monkeypatch.setattr(session.TrainingSession, "check", stop_in_supernet2)
    with pytest.raises(OsnasInterrupted):
        run_search(data_root=str(synth_root), out=str(out), overrides=SEARCH)
    monkeypatch.setattr(session.TrainingSession, "check", check)
    assert (out / "supernet1" / "final_alphas.json").is_file()
    assert not (out / "supernet2" / "final_alphas.json").exists()
    assert load_checkpoint(out / "supernet2" / "checkpoint.pth")["global_step"] == 4
    first = (out / "supernet1" / "checkpoint.pth").read_bytes()
    # a fresh start into the folder is refused; so is a resume that asks for another number of supernets
    capsys.readouterr()
    assert main(["search", "--data-root", str(synth_root), "--out", str(out)] + _sets(SEARCH)) == 2
    assert "already holds a search run; use --resume" in capsys.readouterr().err
    assert main(["search", "--data-root", str(synth_root), "--out", str(out), "--resume", "--runs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lists supernets ['supernet1', 'supernet2']" in err[0] and "3" in err[0]
    assert main(["search", "--data-root", str(synth_root), "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "supernet 2/2" in err and "supernet 1/2" not in err  # the finished one is skipped
    assert (out / "supernet1" / "checkpoint.pth").read_bytes() == first
    for k in (1, 2):
        a = load_checkpoint(two / f"supernet{k}" / "checkpoint.pth")["model"]
        b = load_checkpoint(out / f"supernet{k}" / "checkpoint.pth")["model"]
        assert all(torch.equal(a[key], b[key]) for key in a), f"supernet{k} diverged"
        assert read_history(two / f"supernet{k}") == read_history(out / f"supernet{k}")


def test_bad_numbers_of_supernets(synth_root, tmp_path, capsys):
    capsys.readouterr()
    assert main(["search", "--data-root", str(synth_root), "--out", str(tmp_path / "o"), "--runs", "0"]
                + _sets(TINY)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.runs must be >= 1" in err[0]
    assert not (tmp_path / "o").exists()
    with pytest.raises(OsnasError, match="expected an integer"):
        build_config(overrides=["search.runs=two"])
