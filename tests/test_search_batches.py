"""What feeds each step of the search: which domains (and, for `identities`, which people) the
weight and the alpha batches come from, and their sizes, for every objective; the objective
`auto` resolves to; and the search options that act on the alpha step (alpha_every,
entropy_weight, objective=unseen and identities) through the real search loop."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from _reid_gen import random_ids, write_market
from conftest import TINY
from osnas.cli import main
from osnas.data import combine, split_identities
from osnas.data.datasets import ReidDataset
from osnas.errors import OsnasError
from osnas.search import read_history, run_search
from osnas.search.batches import SearchBatches, resolve_objective

N_DOMAINS = 3


def _domain(name, n_ids=6, per=4):
    train = [(f"/{name}/{p}_{k}.jpg", p, k % 2, 0) for p in range(n_ids) for k in range(per)]
    return ReidDataset(name, f"/{name}", train, [], [])


def _batches(objective, batch_size=12, K=2, **kw):
    union = combine([_domain(f"d{i}") for i in range(N_DOMAINS)])
    return SearchBatches(union, objective, batch_size, K, transform=None, seed=3, **kw)


def _domains_of(data, keys):
    return Counter(data.items[i][3] for i, _ in keys)


def test_lodo_weight_batches_skip_the_held_out_domain_alpha_batches_only_it():
    data = _batches("lodo")
    plan = data.plan_steps(0, 6)
    for t in range(6):
        w, a = plan[2 * t], plan[2 * t + 1]
        held = t % N_DOMAINS  # the held-out source rotates every step
        assert _domains_of(data, w) == {d: 12 // (N_DOMAINS - 1) for d in range(N_DOMAINS) if d != held}
        assert _domains_of(data, a) == {held: 12}
        # PK sub-batches: K images of each identity
        assert all(v == 2 for v in Counter(data.items[i][1] for i, _ in a).values())


def test_unseen_domain_never_feeds_the_weights():
    data = _batches("unseen", unseen="d1")
    assert data.unseen == 1
    plan = data.plan_steps(0, 8)
    for t in range(8):
        assert _domains_of(data, plan[2 * t]) == {0: 6, 2: 6}
        assert _domains_of(data, plan[2 * t + 1]) == {1: 12}
    assert _batches("unseen").unseen == N_DOMAINS - 1  # default: the last source
    with pytest.raises(OsnasError, match="not one of the sources"):
        _batches("unseen", unseen="market")


def test_heldout_splits_images_of_the_same_identities():
    data = _batches("heldout", batch_size=12)
    plan = data.plan_steps(0, 4)
    w_imgs = {i for t in range(4) for i, _ in plan[2 * t]}
    a_imgs = {i for t in range(4) for i, _ in plan[2 * t + 1]}
    assert not w_imgs & a_imgs  # different images ...
    assert {data.items[i][1] for i in a_imgs} <= {data.items[i][1] for i in range(len(data.items))}
    assert _domains_of(data, plan[0]) == {d: 4 for d in range(N_DOMAINS)}
    assert _domains_of(data, plan[1]) == {d: 4 for d in range(N_DOMAINS)}


def _identities(batch_size=12, K=2, n_ids=12, fraction=0.5):
    union = combine([_domain(f"d{i}", n_ids=n_ids) for i in range(N_DOMAINS)])
    return SearchBatches(union, "identities", batch_size, K, transform=None, seed=3, val_fraction=fraction)


def test_identities_weights_never_see_the_kept_out_people_and_the_alpha_step_sees_only_them():
    """objective=identities: `val_fraction` of each source's identities are kept out whole; every
    weight batch holds the other identities of every source, the alpha batch of step t only the
    kept-out identities of source t mod N."""
    data = _identities()
    assert data.objective == "identities" and data.alpha_steps_per_source() == N_DOMAINS
    _, kept = split_identities(data.union.train, 0.5, seed=3)
    kept_ids = {(it[3], it[1]) for it in kept}
    assert Counter(d for d, _ in kept_ids) == {d: 6 for d in range(N_DOMAINS)}  # half of 12 per source

    def people(keys):
        return {(data.items[i][3], data.items[i][1]) for i, _ in keys}

    plan = data.plan_steps(0, 12)
    trained = set()
    for t in range(12):
        w, a = plan[2 * t], plan[2 * t + 1]
        assert not people(w) & kept_ids, t
        assert people(a) <= kept_ids, t
        assert _domains_of(data, w) == {d: 12 // N_DOMAINS for d in range(N_DOMAINS)}  # every source trains
        assert _domains_of(data, a) == {t % N_DOMAINS: 12}  # one source's kept-out people judge, in turn
        assert all(v == 2 for v in Counter(data.items[i][1] for i, _ in a).values())
        trained |= people(w)
    everyone = {(it[3], it[1]) for it in data.union.train}
    assert trained == everyone - kept_ids  # the weights see every other person of every source


def test_the_kept_out_people_follow_the_fraction_and_the_seed():
    items = combine([_domain(f"d{i}", n_ids=10) for i in range(2)]).train
    train, kept = split_identities(items, 0.3, seed=1)
    ids = lambda its: {(it[3], it[1]) for it in its}  # noqa: E731
    assert Counter(d for d, _ in ids(kept)) == {0: 3, 1: 3} and not ids(train) & ids(kept)
    assert len(train) + len(kept) == len(items)
    assert split_identities(items, 0.3, seed=1) == (train, kept)  # deterministic
    assert ids(split_identities(items, 0.3, seed=2)[1]) != ids(kept)
    with pytest.raises(OsnasError, match="too few to keep 2 out"):
        split_identities(combine([_domain("d0", n_ids=3)]).train, 0.3)
    with pytest.raises(OsnasError, match="strictly between 0 and 1"):
        split_identities(items, 1.0)


def test_auto_is_unseen_with_two_or_more_sources_and_identities_with_one():
    assert [resolve_objective("auto", n) for n in (1, 2, 3, 5)] == ["identities", "unseen", "unseen", "unseen"]
    assert _batches("auto").objective == "unseen"
    assert resolve_objective("lodo", 2) == "lodo" and resolve_objective("heldout", 1) == "heldout"
    assert resolve_objective("unseen", 2) == "unseen"  # allowed when asked for: each supernet learns one source
    for objective in ("lodo", "unseen"):
        with pytest.raises(OsnasError, match=f"search.objective={objective} needs at least 2 source domains, got 1"):
            resolve_objective(objective, 1)
    with pytest.raises(OsnasError, match="expected one of auto, heldout, lodo, unseen, identities"):
        resolve_objective("people", 3)


def test_batch_size_that_does_not_split_is_a_clear_error():
    with pytest.raises(OsnasError, match="sub-batches"):
        _batches("lodo", batch_size=6, K=2)  # 3 images per domain: not a multiple of K


def test_streams_resume_at_the_same_batches():
    a, b = _batches("lodo"), _batches("lodo")
    a.plan_steps(0, 5)
    b.load_state_dict(a.state_dict())
    assert a.plan_steps(5, 3) == b.plan_steps(5, 3)


# ----------------------------------------------------------------------------- through the loop
SEARCH = TINY + ["search.epochs=3", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=1"]


def _changed(rows):
    return [r["alphas"] != p["alphas"] for p, r in zip(rows, rows[1:])]


def test_alpha_every_skips_alpha_steps(synth_root, tmp_path):
    rows = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "r"), overrides=SEARCH))
    # the default alpha_every=2: steps 0-1 warm-up; alpha steps at global steps 2 and 4 only
    assert [r["loss_a"] is not None for r in rows] == [False, False, True, False, True, False]
    assert _changed(rows) == [False, True, False, True, False]
    rows = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "e"),
                                   overrides=SEARCH + ["search.alpha_every=1"]))
    assert [r["loss_a"] is not None for r in rows] == [False, False, True, True, True, True]
    assert _changed(rows) == [False, True, True, True, True]


def test_entropy_weight_makes_alphas_more_decisive(synth_root, tmp_path):
    base = SEARCH + ["search.alpha_lr=0.2"]
    plain = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "a"), overrides=base))
    sharp = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "b"),
                                    overrides=base + ["search.entropy_weight=5.0"]))
    mean_h = lambda rows: sum(rows[-1]["entropy"].values()) / len(rows[-1]["entropy"])  # noqa: E731
    assert mean_h(sharp) < mean_h(plain)


def _one_line_error(args, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("osnas: error: "), err
    return err[0]


def test_unseen_objective_needs_a_metric_loss(synth_root, tmp_path, capsys):
    for objective in ("unseen", "identities"):  # both judge people the classifier never saw
        sets = SEARCH + [f"search.objective={objective}", "search.alpha_loss=id"]
        line = _one_line_error(["search", "--data-root", synth_root, "--out", tmp_path / "x"]
                               + [x for s in sets for x in ("--set", s)], capsys)
        assert f"search.objective={objective}" in line and "search.alpha_loss=triplet" in line
    assert not (tmp_path / "x").exists()
    # the default objective (auto: unseen with three sources) with the default alpha loss (triplet)
    run = run_search(data_root=str(synth_root), out=str(tmp_path / "u"), overrides=SEARCH)
    rows = read_history(run)
    assert [r["loss_a"] is not None for r in rows] == [False, False, True, False, True, False]  # alpha_every=2
    assert all(math.isfinite(r["loss_a"]) for r in rows if r["loss_a"] is not None)
    info = json.loads((run / "run.json").read_text())
    assert info["objective"] == "unseen" and info["unseen_domain"] == "synth2"


def test_unseen_with_two_sources_says_so_and_takes_the_sources_in_turn(synth_root, tmp_path, capsys):
    """objective=unseen with two sources (auto's choice) trains each supernet on one source and
    judges it on the other: one note when the search starts, and the two sources kept out in turn."""
    import json

    from osnas.cli import main

    out = tmp_path / "x"
    assert main(["search", "--data-root", str(synth_root), "--sources", "synth0,synth1", "--out", str(out),
                 *[x for s in SEARCH + ["search.runs=2"] for x in ("--set", s)]]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "trains each supernet on one source" in notes[0]
    kept = [json.loads((out / f"supernet{k}" / "run.json").read_text())["unseen_domain"] for k in (1, 2)]
    assert kept == ["synth1", "synth0"]


def test_two_sources_search_on_kept_out_identities(tmp_path):
    """objective=identities with two sources: the search runs through the loop, its alpha steps
    judged on people of both sources that the weights never saw."""
    rng = np.random.default_rng(0)
    for d in range(2):  # 8 identities each: 4 kept out (val_fraction 0.5), 4 to train on
        write_market(tmp_path / f"d{d}", random_ids(rng, 8, 4, 32, 16))
    sources = f"custom:{tmp_path / 'd0'},custom:{tmp_path / 'd1'}"
    run = run_search(sources=sources, out=str(tmp_path / "r"),
                     overrides=SEARCH + ["data.height=32", "data.width=16", "search.val_fraction=0.5",
                                         "search.objective=identities"])
    info = json.loads((run / "run.json").read_text())
    assert info["objective"] == "identities" and info["unseen_domain"] is None
    rows = read_history(run)
    assert [r["loss_a"] is not None for r in rows] == [False, False, True, False, True, False]
    assert _changed(rows) == [False, True, False, True, False]


def test_entropy_weight_acts_in_single_level_too(synth_root, tmp_path):
    base = SEARCH + ["search.order=single", "search.weight_step=mixed", "search.alpha_lr=0.2"]
    plain = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "a"), overrides=base))
    sharp = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "b"),
                                    overrides=base + ["search.entropy_weight=5.0"]))
    assert sharp[-1]["alphas"] != plain[-1]["alphas"]
    mean_h = lambda rows: sum(rows[-1]["entropy"].values()) / len(rows[-1]["entropy"])  # noqa: E731
    assert mean_h(sharp) < mean_h(plain)
