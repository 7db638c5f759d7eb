"""What feeds each step of the search: which domains the weight and the alpha batches come
from, and their sizes, for every objective; and the search options that act on the alpha
step (alpha_every, entropy_weight, objective=unseen) through the real search loop."""

from collections import Counter

import pytest

from conftest import TINY
from osnas.data import combine
from osnas.data.datasets import ReidDataset
from osnas.errors import OsnasError
from osnas.search import read_history, run_search
from osnas.search.batches import SearchBatches

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


def test_batch_size_that_does_not_split_is_a_clear_error():
    with pytest.raises(OsnasError, match="sub-batches"):
        _batches("lodo", batch_size=6, K=2)  # 3 images per domain: not a multiple of K


def test_streams_resume_at_the_same_batches():
    a, b = _batches("lodo"), _batches("lodo")
    a.plan_steps(0, 5)
    b.load_state_dict(a.state_dict())
    assert a.plan_steps(5, 3) == b.plan_steps(5, 3)


# ----------------------------------------------------------------------------- through the loop
SEARCH = TINY + ["search.epochs=3", "search.steps_per_epoch=2", "search.warmup_epochs=1"]


def _changed(rows):
    return [r["alphas"] != p["alphas"] for p, r in zip(rows, rows[1:])]


def test_alpha_every_skips_alpha_steps(synth_root, tmp_path):
    rows = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "r"),
                                   overrides=SEARCH + ["search.alpha_every=2"]))
    # steps 0-1 warm-up; alpha steps at global steps 2 and 4 only
    assert [r["loss_a"] is not None for r in rows] == [False, False, True, False, True, False]
    assert _changed(rows) == [False, True, False, True, False]


def test_entropy_weight_makes_alphas_more_decisive(synth_root, tmp_path):
    base = SEARCH + ["search.alpha_lr=0.2"]
    plain = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "a"), overrides=base))
    sharp = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "b"),
                                    overrides=base + ["search.entropy_weight=5.0"]))
    mean_h = lambda rows: sum(rows[-1]["entropy"].values()) / len(rows[-1]["entropy"])  # noqa: E731
    assert mean_h(sharp) < mean_h(plain)


def test_unseen_objective_needs_a_metric_loss(synth_root, tmp_path, capsys):
    from osnas.cli import main

    rc = main(["search", "--data-root", str(synth_root), "--out", str(tmp_path / "x")]
              + [x for s in SEARCH + ["search.objective=unseen"] for x in ("--set", s)])
    assert rc == 2 and "search.alpha_loss=triplet" in capsys.readouterr().err
    run = run_search(data_root=str(synth_root), out=str(tmp_path / "u"),
                     overrides=SEARCH + ["search.objective=unseen", "search.alpha_loss=triplet"])
    rows = read_history(run)
    assert all(r["loss_a"] is not None for r in rows if r["epoch"] >= 1)
    import json

    assert json.loads((run / "run.json").read_text())["unseen_domain"] == "synth2"


def test_entropy_weight_acts_in_single_level_too(synth_root, tmp_path):
    base = SEARCH + ["search.order=single", "search.alpha_lr=0.2"]
    plain = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "a"), overrides=base))
    sharp = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "b"),
                                    overrides=base + ["search.entropy_weight=5.0"]))
    assert sharp[-1]["alphas"] != plain[-1]["alphas"]
    mean_h = lambda rows: sum(rows[-1]["entropy"].values()) / len(rows[-1]["entropy"])  # noqa: E731
    assert mean_h(sharp) < mean_h(plain)
