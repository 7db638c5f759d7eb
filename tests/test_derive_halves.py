"""retrieval-pooled chooses on one half of the kept-out people and derive's check uses the other:
the halves are disjoint, deterministic, and every kept-out person is in one of them."""

from __future__ import annotations

import pytest

from conftest import TINY


def test_identity_halves_split_every_person_once():
    from osnas.derive.retrieval import identity_half

    pids = [5, 5, 9, 2, 2, 2, 11, 40, 40, 7]
    side = identity_half(pids, seed=3)
    assert set(side) == set(pids) and set(side.values()) == {0, 1}
    assert sum(v == 0 for v in side.values()) == 3 and sum(v == 1 for v in side.values()) == 3  # 6 people
    assert identity_half(list(reversed(pids)), seed=3) == side  # the order of the images does not matter
    assert any(identity_half(pids, seed=s) != side for s in range(4, 12))  # the seed draws the split


@pytest.fixture(scope="module")
def unseen_run(synth_root, tmp_path_factory):
    """One tiny supernet judged on a source its weights never saw (objective unseen, 3 sources)."""
    from osnas.search import run_search

    out = tmp_path_factory.mktemp("halves") / "run"
    run_search(sources="synth0,synth1,synth2", data_root=str(synth_root), out=str(out),
               overrides=TINY + ["search.runs=1", "search.epochs=2", "search.steps_per_epoch=2",
                                 "search.warmup_epochs=1"])
    return out


def test_the_choice_and_the_check_score_different_people(unseen_run):
    from osnas.derive import load_run
    from osnas.derive.retrieval import SubnetScorer

    run = load_run(unseen_run)
    a = SubnetScorer(run, batches=2, gallery="pooled", half=0)
    b = SubnetScorer(run, batches=2, gallery="pooled", half=1)
    ids_a = {int(p) for batch in a.val for p in batch[1]}
    ids_b = {int(p) for batch in b.val for p in batch[1]}
    assert ids_a and ids_b and not ids_a & ids_b
    path = [p.simplest for p in run.space.positions]
    assert len(a.per_batch(path)) == len(ids_a) and len(b.per_batch(path)) == len(ids_b)  # one unit per person
    with pytest.raises(Exception, match="pooled gallery"):
        SubnetScorer(run, batches=2, gallery="batch", half=0)


def test_derive_records_its_settings_and_the_check(unseen_run, tmp_path):
    from osnas.derive import run_derive
    from osnas.models.genotype import load_genotype

    g = load_genotype(run_derive(unseen_run, out=tmp_path / "g.yaml", batches=2))
    assert g.select == "retrieval-pooled" and g.derive["methods"] == ["retrieval-pooled"]
    assert g.derive["against"] == ["osnet", "osnet_ibn", "osnet_ain"] and g.derive["gate"] == 2.0
    d = g.decision
    assert set(d["scores"]) == {"searched", "osnet", "osnet_ibn", "osnet_ain"} and d["verdict"] in ("searched",
                                                                                                     "published")
    if d["verdict"] == "published":  # the design is written, and the search's own answer beside it
        assert g.name == d["recommended"] and (tmp_path / "g.searched.yaml").is_file()
        own = load_genotype(tmp_path / "g.searched.yaml")
        assert own.in_sites() == d["searched_in_sites"]
    none = load_genotype(run_derive(unseen_run, out=tmp_path / "n.yaml", batches=2, against="none"))
    assert none.decision == {} and none.derive["against"] == []
