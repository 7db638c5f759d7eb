"""Evaluation metrics (CMC / mAP / mINP), features path, re-ranking.

The semantics are those of the usual re-ID evaluators (see osnas/metrics.py); ties are defined by a
stable sort.
`naive_eval` below is the definition written out (one stable argsort per query), kept
independent of osnas.metrics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import osnas.metrics as M
from osnas.errors import OsnasError
from osnas.metrics import compute_distance_matrix, evaluate_features, evaluate_rank, evaluate_rank_naive
from osnas.rerank import check_rerank_memory, re_ranking, re_ranking_features


# ----------------------------------------------------------------------------- reference
def naive_eval(D, qp, gp, qc, gc, max_rank=50):
    D, qp, gp, qc, gc = (np.asarray(x) for x in (D, qp, gp, qc, gc))
    max_rank = min(max_rank, D.shape[1])
    cmcs, aps, inps = [], [], []
    for i in range(D.shape[0]):
        order = np.argsort(D[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        hits = gp[order][keep] == qp[i]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the matches
        aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
        inps.append(ranks.size / ranks[-1])
        cmcs.append((np.arange(1, max_rank + 1) >= ranks[0]).astype(float))
    if not cmcs:
        raise OsnasError("all queries have no match in the gallery")
    return {"cmc": np.mean(cmcs, 0), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)), "num_valid": len(cmcs)}


def assert_same(a, b, tol=1e-12):
    assert a["num_valid"] == b["num_valid"]
    assert len(a["cmc"]) == len(b["cmc"])
    np.testing.assert_allclose(a["cmc"], b["cmc"], rtol=0, atol=tol)
    assert a["mAP"] == pytest.approx(b["mAP"], rel=tol, abs=tol)
    assert a["mINP"] == pytest.approx(b["mINP"], rel=tol, abs=tol)


def random_case(rng, nq, ng, npid, ncam, ties=False, dtype=np.float32):
    qp = rng.integers(0, npid, nq)
    gp = rng.integers(0, npid, ng)
    qc = rng.integers(0, ncam, nq)
    gc = rng.integers(0, ncam, ng)
    if ties:
        D = rng.integers(0, 4, (nq, ng)).astype(dtype)
    else:
        D = rng.random((nq, ng)).astype(dtype)
    return D, qp, gp, qc, gc


# ----------------------------------------------------------------------------- by hand
def test_hand_single_query_removal_and_distractor():
    # query: pid 1, cam 0.  gallery (index: pid, cam, distance):
    #   g0: 1, 0, 0.10  same pid & same cam -> removed
    #   g1: 2, 1, 0.20
    #   g2: 1, 1, 0.30  match
    #   g3: 3, 1, 0.40
    #   g4: 1, 2, 0.50  match
    #   g5: 0, 1, 0.15  distractor: stays, counts as a non-match
    # kept, sorted: g5, g1, g2*, g3, g4*  -> matches at ranks 3 and 5
    # AP = (1/3 + 2/5) / 2 = 11/30;  INP = 2/5
    # CMC: max_rank 50 clipped to the gallery size 6 -> [0, 0, 1, 1, 1, 1]
    D = np.array([[0.10, 0.20, 0.30, 0.40, 0.50, 0.15]], np.float32)
    r = evaluate_rank(D, [1], [1, 2, 1, 3, 1, 0], [0], [0, 1, 1, 1, 2, 1])
    np.testing.assert_array_equal(r["cmc"], [0, 0, 1, 1, 1, 1])
    assert r["mAP"] == pytest.approx(11 / 30)
    assert r["mINP"] == pytest.approx(2 / 5)
    assert r["num_valid"] == 1


def test_hand_two_queries_ties_and_skipped():
    # gallery (index: pid, cam): g0 (2, 1), g1 (1, 1), g2 (1, 1), g3 (3, 1), g4 (5, 0)
    # q0: pid 1, cam 0; distances 0.5, 0.5, 0.2, 0.5, 0.9
    #   stable order: g2 (0.2)*, g0 (0.5), g1 (0.5)*, g3 (0.5), g4 -> match ranks 1, 3
    #   AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3; first match at rank 1
    # q1: pid 3, cam 0; distances 0.1, 0.3, 0.3, 0.3, 0.3
    #   order: g0, g1, g2, g3*, g4 (ties by index) -> match rank 4: AP = 1/4, INP = 1/4
    # q2: pid 5, cam 0: its only item g4 is same pid & same cam -> skipped
    # q3: pid 7: not in the gallery -> skipped
    # CMC (max_rank 5, over 2 valid queries): ranks 1 and 4 -> [.5, .5, .5, 1, 1]
    D = np.array(
        [[0.5, 0.5, 0.2, 0.5, 0.9], [0.1, 0.3, 0.3, 0.3, 0.3], [0.0] * 5, [0.0] * 5], np.float32
    )
    qp, qc = [1, 3, 5, 7], [0, 0, 0, 0]
    gp, gc = [2, 1, 1, 3, 5], [1, 1, 1, 1, 0]
    r = evaluate_rank(D, qp, gp, qc, gc, max_rank=5)
    assert r["num_valid"] == 2
    np.testing.assert_allclose(r["cmc"], [0.5, 0.5, 0.5, 1, 1])
    assert r["mAP"] == pytest.approx((5 / 6 + 1 / 4) / 2)
    assert r["mINP"] == pytest.approx((2 / 3 + 1 / 4) / 2)


def test_hand_tie_order_is_by_gallery_index():
    # q: pid 1 cam 0; g0: pid 2, g1: pid 1 (cam 1); both at distance 0.5 -> g0 first -> rank 2
    r = evaluate_rank([[0.5, 0.5]], [1], [2, 1], [0], [1, 1])
    assert r["mAP"] == pytest.approx(0.5) and r["cmc"][0] == 0
    # swap the gallery order: the match comes first -> rank 1
    r = evaluate_rank([[0.5, 0.5]], [1], [1, 2], [0], [1, 1])
    assert r["mAP"] == 1.0 and r["cmc"][0] == 1


def test_negative_zero_ties_with_zero():
    # -0.0 == 0.0: a tie, broken by index (g0 non-match first)
    r = evaluate_rank(np.array([[0.0, -0.0]], np.float32), [1], [2, 1], [0], [1, 1])
    assert r["mAP"] == pytest.approx(0.5)


def test_all_skipped_raises():
    with pytest.raises(OsnasError, match="all queries have no match"):
        evaluate_rank(np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0], [0, 0, 1])


def test_max_rank_larger_than_gallery_is_clipped():
    D = np.array([[0.3, 0.1, 0.2]])
    r = evaluate_rank(D, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=50)
    assert r["cmc"].shape == (3,)
    np.testing.assert_array_equal(r["cmc"], [0, 0, 1])
    r = evaluate_rank(D, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=2)
    np.testing.assert_array_equal(r["cmc"], [0, 0])


def test_fewer_kept_items_than_max_rank():
    # 4 gallery items, 2 removed (same pid, same cam): kept list has 2 items; CMC length 4
    r = evaluate_rank([[0.1, 0.2, 0.3, 0.4]], [1], [1, 1, 2, 1], [0], [0, 0, 1, 1], max_rank=4)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1])
    assert r["mAP"] == pytest.approx(0.5) and r["mINP"] == pytest.approx(0.5)


def test_distractors_only_match_pid_0_queries():
    # pid 0 items are ordinary non-matches for a pid-1 query (plain pid equality)
    r = evaluate_rank([[0.1, 0.2, 0.3]], [1], [0, 0, 1], [0], [1, 1, 1])
    assert r["cmc"][2] == 1 and r["cmc"][1] == 0 and r["mAP"] == pytest.approx(1 / 3)


def test_result_types():
    D, qp, gp, qc, gc = random_case(np.random.default_rng(0), 10, 30, 4, 2)
    r = evaluate_rank(D, qp, gp, qc, gc, max_rank=5)
    assert isinstance(r["cmc"], np.ndarray) and r["cmc"].shape == (5,)
    assert isinstance(r["mAP"], float) and isinstance(r["mINP"], float) and isinstance(r["num_valid"], int)
    assert 0 <= r["mINP"] <= r["mAP"] <= 1
    assert np.all(np.diff(r["cmc"]) >= 0)


# ----------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_agrees_with_naive_random(ties, dtype):
    rng = np.random.default_rng(3 + ties)
    for _ in range(15):
        nq, ng = int(rng.integers(1, 40)), int(rng.integers(1, 120))
        D, qp, gp, qc, gc = random_case(rng, nq, ng, int(rng.integers(1, 12)), int(rng.integers(1, 4)),
                                        ties=ties or dtype == np.int64, dtype=dtype)
        mr = int(rng.integers(1, 60))
        try:
            want = naive_eval(D, qp, gp, qc, gc, mr)
        except OsnasError:
            with pytest.raises(OsnasError):
                evaluate_rank(D, qp, gp, qc, gc, mr)
            continue
        assert_same(evaluate_rank(D, qp, gp, qc, gc, mr), want)
        assert_same(evaluate_rank_naive(D, qp, gp, qc, gc, mr), want)


@pytest.mark.parametrize("compact", [0.0, 1.0, 0.03])
def test_every_counting_branch_and_thread_pool(monkeypatch, compact):
    # force: selection (partition) only / compaction only / default; many blocks + pool
    monkeypatch.setattr(M, "_COMPACT_FRAC", compact)
    monkeypatch.setattr(M, "_BLOCK_ELEMS", 3000)
    monkeypatch.setattr(M, "_num_workers", lambda: 2)
    rng = np.random.default_rng(11)
    for ties in (False, True):
        D, qp, gp, qc, gc = random_case(rng, 90, 400, 25, 3, ties=ties)
        assert_same(evaluate_rank(D, qp, gp, qc, gc), naive_eval(D, qp, gp, qc, gc))


def test_heavy_ties_tie_fallback_medium():
    # quantised distances (many non-match/match ties) on a larger gallery
    rng = np.random.default_rng(5)
    D, qp, gp, qc, gc = random_case(rng, 60, 2000, 40, 4)
    D = np.round(D * 20).astype(np.float32) / 20
    assert_same(evaluate_rank(D, qp, gp, qc, gc), naive_eval(D, qp, gp, qc, gc))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nq=st.integers(1, 8), ng=st.integers(1, 25), npid=st.integers(1, 5), ncam=st.integers(1, 3),
    levels=st.integers(1, 6), max_rank=st.integers(1, 30), seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_naive(nq, ng, npid, ncam, levels, max_rank, seed):
    rng = np.random.default_rng(seed)
    D, qp, gp, qc, gc = random_case(rng, nq, ng, npid, ncam)
    D = np.floor(D * levels).astype(np.float32)  # few distinct values: lots of ties
    try:
        want = naive_eval(D, qp, gp, qc, gc, max_rank)
    except OsnasError:
        with pytest.raises(OsnasError):
            evaluate_rank(D, qp, gp, qc, gc, max_rank)
        return
    assert_same(evaluate_rank(D, qp, gp, qc, gc, max_rank), want)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(1)
    D, qp, gp, qc, gc = random_case(rng, 20, 80, 6, 3)
    a = evaluate_rank(D, qp, gp, qc, gc)
    b = evaluate_rank(torch.from_numpy(D), torch.from_numpy(qp), torch.from_numpy(gp),
                      torch.from_numpy(qc), torch.from_numpy(gc))
    assert_same(a, b, tol=0)
    c = evaluate_rank(D.tolist(), qp.tolist(), gp.tolist(), qc.tolist(), gc.tolist())
    assert_same(a, c, tol=0)
    h = evaluate_rank(torch.from_numpy(D).half(), qp, gp, qc, gc)  # upcast, order-preserving
    assert_same(h, naive_eval(torch.from_numpy(D).half().float().numpy(), qp, gp, qc, gc))


def test_non_contiguous_distmat():
    rng = np.random.default_rng(2)
    D, qp, gp, qc, gc = random_case(rng, 30, 20, 5, 2)
    Dt = np.asfortranarray(D)
    assert_same(evaluate_rank(Dt, qp, gp, qc, gc), naive_eval(D, qp, gp, qc, gc))


# ----------------------------------------------------------------------------- CUHK03 classic
def test_single_gallery_shot():
    rng = np.random.default_rng(4)
    # one gallery item per identity: the single-shot CMC equals the plain CMC
    gp = np.arange(30)
    qp = rng.integers(0, 30, 12)
    D = rng.random((12, 30))
    plain = evaluate_rank(D, qp, gp, np.zeros(12), np.ones(30), max_rank=10)
    sgs = evaluate_rank(D, qp, gp, np.zeros(12), np.ones(30), max_rank=10, single_gallery_shot=True)
    assert_same(plain, sgs)
    # several items per identity: deterministic per seed, mAP from the full gallery
    gp = rng.integers(0, 10, 60)
    qp = rng.integers(0, 10, 15)
    D = rng.random((15, 60))
    args = (D, qp, gp, np.zeros(15), np.ones(60))
    a = evaluate_rank(*args, single_gallery_shot=True, repeats=10, seed=1)
    b = evaluate_rank(*args, single_gallery_shot=True, repeats=10, seed=1)
    full = evaluate_rank(*args)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["mAP"] == full["mAP"] and a["cmc"].shape == (50,)
    assert a["cmc"][9] == 1.0  # 10 identities -> 10 sampled items -> always within rank 10
    # the distribution matches a direct simulation of the protocol (one random item per id)
    many = evaluate_rank(*args, max_rank=10, single_gallery_shot=True, repeats=300, seed=2)
    np.testing.assert_allclose(many["cmc"], naive_sgs_cmc(*args, repeats=2000, max_rank=10), atol=0.04)


def naive_sgs_cmc(D, qp, gp, qc, gc, repeats, max_rank):
    """Simulate the protocol: per repeat, one uniformly random kept item per identity."""
    rng = np.random.default_rng(123)
    out = []
    for i in range(len(qp)):
        order = np.argsort(D[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        kept = gp[order][keep]  # identities in ranked order
        if not (kept == qp[i]).any():
            continue
        ids = np.unique(kept)
        keys = rng.random((repeats, kept.size))  # item with the smallest key = uniform pick
        chosen = np.stack([np.flatnonzero(kept == p)[np.argmin(keys[:, kept == p], axis=1)] for p in ids], 1)
        own = chosen[:, np.flatnonzero(ids == qp[i])[0]]
        first = 1 + (chosen < own[:, None]).sum(1)  # rank among the sampled items
        out.append((np.arange(1, max_rank + 1)[None, :] >= first[:, None]).mean(0))
    return np.mean(out, 0)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "args,msg",
    [
        ((np.zeros((2, 3)), [1], [1, 2, 3], [0, 0], [0, 0, 0]), "q_pids"),
        ((np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [0, 0, 0]), "g_pids"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0], [0, 0, 0]), "q_camids"),
        ((np.zeros(3), [1], [1, 2, 3], [0], [0, 0, 0]), "2-D"),
        ((np.zeros((0, 3)), [], [1, 2, 3], [], [0, 0, 0]), "empty"),
        ((np.array([["a", "b"]]), [1], [1, 2], [0], [1, 1]), "real numbers"),
    ],
)
def test_bad_inputs(args, msg):
    with pytest.raises(OsnasError, match=msg):
        evaluate_rank(*args)


def test_bad_max_rank_and_nan():
    with pytest.raises(OsnasError, match="max_rank"):
        evaluate_rank([[0.1]], [1], [1], [0], [1], max_rank=0)
    with pytest.raises(OsnasError, match="NaN"):
        evaluate_rank([[np.nan, 0.2]], [1], [1, 2], [0], [1, 1])
    # NaN at a non-match sorts last, like np.argsort: no error
    r = evaluate_rank([[np.nan, 0.2]], [1], [2, 1], [0], [1, 1])
    assert r["mAP"] == 1.0


# ----------------------------------------------------------------------------- features
def _features(rng, nq=23, ng=61, dim=16, npid=8):
    qf = rng.standard_normal((nq, dim)).astype(np.float32)
    gf = rng.standard_normal((ng, dim)).astype(np.float32)
    return qf, gf, rng.integers(0, npid, nq), rng.integers(0, npid, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng)


def test_distance_matrix_definitions():
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((5, 8)), rng.standard_normal((7, 8))
    cos = 1 - (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ (gf / np.linalg.norm(gf, axis=1, keepdims=True)).T
    sq = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    d = compute_distance_matrix(qf, gf, "cosine")
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float32 and d.shape == (5, 7)
    np.testing.assert_allclose(d.numpy(), cos, atol=1e-5)
    np.testing.assert_allclose(compute_distance_matrix(torch.from_numpy(qf), gf, "euclidean").numpy(), sq, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_evaluate_features_equals_full_matrix(metric, chunk):
    rng = np.random.default_rng(7)
    qf, gf, qp, gp, qc, gc = _features(rng)
    full = evaluate_rank(compute_distance_matrix(qf, gf, metric), qp, gp, qc, gc)
    got = evaluate_features(torch.from_numpy(qf), gf, qp, gp, qc, gc, metric=metric, chunk_size=chunk)
    assert_same(got, full)
    assert_same(got, naive_eval(compute_distance_matrix(qf, gf, metric).numpy(), qp, gp, qc, gc))


def test_evaluate_features_computes_chunks_only(monkeypatch):
    rng = np.random.default_rng(6)
    qf, gf, qp, gp, qc, gc = _features(rng, nq=50)
    seen = []
    orig = M._DistanceRows.rows

    def rows(self, a, z):
        seen.append(z - a)
        return orig(self, a, z)

    monkeypatch.setattr(M._DistanceRows, "rows", rows)
    evaluate_features(qf, gf, qp, gp, qc, gc, chunk_size=16)
    assert seen == [16, 16, 16, 2]


def test_evaluate_features_sgs_and_max_rank():
    rng = np.random.default_rng(8)
    qf, gf, qp, gp, qc, gc = _features(rng, ng=20)
    r = evaluate_features(qf, gf, qp, gp, qc, gc, max_rank=50, chunk_size=5)
    assert r["cmc"].shape == (20,)
    a = evaluate_features(qf, gf, qp, gp, qc, gc, single_gallery_shot=True, seed=3, chunk_size=4)
    b = evaluate_rank(compute_distance_matrix(qf, gf), qp, gp, qc, gc, single_gallery_shot=True, seed=3)
    # the draws depend on (seed, query index) only, not on the chunking
    assert_same(a, b)


def test_features_bad_inputs():
    rng = np.random.default_rng(9)
    qf, gf, qp, gp, qc, gc = _features(rng)
    with pytest.raises(OsnasError, match="cosine, euclidean"):
        evaluate_features(qf, gf, qp, gp, qc, gc, metric="manhattan")
    with pytest.raises(OsnasError, match="cosine, euclidean"):
        compute_distance_matrix(qf, gf, "l1")
    with pytest.raises(OsnasError, match="dim"):
        evaluate_features(qf, gf[:, :5], qp, gp, qc, gc)
    with pytest.raises(OsnasError, match="q_pids"):
        evaluate_features(qf, gf, qp[:-1], gp, qc, gc)
    with pytest.raises(OsnasError, match="2-D"):
        evaluate_features(qf[0], gf, qp, gp, qc, gc)
    with pytest.raises(OsnasError, match="chunk_size"):
        evaluate_features(qf, gf, qp, gp, qc, gc, chunk_size=0)
    bad = qf.copy()
    bad[0, 0] = np.nan
    with pytest.raises(OsnasError, match="NaN"):
        evaluate_features(bad, gf, qp, gp, qc, gc)


# ----------------------------------------------------------------------------- re-ranking
def naive_rerank(q_g, q_q, g_g, k1=20, k2=6, lam=0.3):
    """k-reciprocal re-ranking from its definitions (Zhong et al., CVPR 2017, section 3), one set
    at a time: slow and plain, the yardstick for osnas.rerank. Distances are squared, stored in
    float32 and scaled by their column maximum, as published; neighbour lists use a stable sort."""
    n_q = q_g.shape[0]
    dist = (np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2).astype(np.float32)
    dist = (dist / dist.max(axis=0)).T  # row i: the (scaled) distances from item i
    n = len(dist)
    order = [list(np.argsort(dist[i], kind="stable")) for i in range(n)]

    def nearest(i, k):  # N(i, k), item i itself included
        return set(order[i][:k])

    def reciprocal(i, k):  # R(i, k): the neighbours of i that have i among their own neighbours
        return {j for j in nearest(i, k) if i in nearest(j, k)}

    half = int(np.around(k1 / 2.0)) + 1
    weights = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1 + 1)
        expanded = set(r)
        for j in r:  # add R(j, k1/2) when it overlaps R(i, k1) by more than two thirds
            rj = reciprocal(j, half)
            if len(rj & r) > 2 / 3 * len(rj):
                expanded |= rj
        members = sorted(expanded)
        e = np.exp(-dist[i, members].astype(np.float64))
        weights[i, members] = e / e.sum()
    if k2 > 1:  # local query expansion: average over the k2 nearest items
        weights = np.array([weights[order[i][:k2]].mean(axis=0) for i in range(n)])
    out = np.empty((n_q, n - n_q))
    for a in range(n_q):
        for b in range(n_q, n):
            jaccard = 1 - np.minimum(weights[a], weights[b]).sum() / np.maximum(weights[a], weights[b]).sum()
            out[a, b - n_q] = (1 - lam) * jaccard + lam * dist[a, b]
    return out


def _dists(qf, gf, metric):
    return tuple(compute_distance_matrix(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))


@pytest.mark.parametrize("metric,k1,k2", [("euclidean", 20, 6), ("cosine", 5, 3), ("euclidean", 3, 1)])
def test_rerank_matches_published_algorithm(metric, k1, k2):
    rng = np.random.default_rng(k1)
    qf = rng.standard_normal((17, 8)).astype(np.float32)
    gf = rng.standard_normal((53, 8)).astype(np.float32)
    qg, qq, gg = _dists(qf, gf, metric)
    out = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=0.3)
    assert out.shape == (17, 53) and out.dtype == np.float32
    np.testing.assert_allclose(out, naive_rerank(qg, qq, gg, k1, k2, 0.3), atol=1e-6)
    # float64 inputs (squared in float64, then float32, like the reference)
    q64 = [x.astype(np.float64) * (1 + 1e-9) for x in (qg, qq, gg)]
    np.testing.assert_allclose(re_ranking(*q64, k1, k2), naive_rerank(*q64, k1, k2, 0.3), atol=1e-6)
    # torch inputs, features entry point
    np.testing.assert_allclose(re_ranking(*(torch.from_numpy(x) for x in (qg, qq, gg)), k1, k2), out, atol=0)
    np.testing.assert_allclose(re_ranking_features(qf, gf, metric, k1, k2), out, atol=1e-6)


def test_rerank_lambda_one_is_normalised_original():
    rng = np.random.default_rng(1)
    qf, gf = rng.standard_normal((6, 4)), rng.standard_normal((15, 4))
    qg, qq, gg = _dists(qf, gf, "euclidean")
    out = re_ranking(qg, qq, gg, lambda_value=1.0)
    colmax = np.maximum(qq.max(0), qg.max(1)) ** 2  # column max of O^2 for query columns
    np.testing.assert_allclose(out, qg**2 / colmax[:, None], rtol=1e-6)


def test_rerank_gallery_permutation_equivariant():
    rng = np.random.default_rng(2)
    qf, gf = rng.standard_normal((8, 6)), rng.standard_normal((40, 6))
    qg, qq, gg = _dists(qf, gf, "euclidean")
    p = rng.permutation(40)
    a = re_ranking(qg, qq, gg)
    b = re_ranking(qg[:, p], qq, gg[np.ix_(p, p)])
    np.testing.assert_allclose(b, a[:, p], atol=1e-6)
    assert np.all(np.isfinite(a)) and a.min() >= 0


def test_rerank_improves_map_on_clustered_data():
    # gallery items of an identity form a tight cluster (each other's k-reciprocal
    # neighbours); queries are much noisier views, so their nearest items are often wrong
    rng = np.random.default_rng(0)
    n_id, per_id, dim = 15, 8, 32
    centers = rng.standard_normal((n_id, dim))
    gp = np.repeat(np.arange(n_id), per_id)
    gf = centers[gp] + 0.6 * rng.standard_normal((gp.size, dim))
    qp = np.arange(n_id).repeat(2)
    qf = centers[qp] + 2.0 * rng.standard_normal((qp.size, dim))  # (seeds 0-4: +0.07 .. +0.16)
    qc, gc = np.zeros(qp.size), np.ones(gp.size)
    qg, qq, gg = _dists(qf, gf, "euclidean")
    before = evaluate_rank(qg, qp, gp, qc, gc)["mAP"]
    after = evaluate_rank(re_ranking(qg, qq, gg), qp, gp, qc, gc)["mAP"]
    assert after > before + 0.05, (before, after)


def test_rerank_bad_inputs_and_memory_guard():
    qg, qq, gg = np.zeros((3, 4)), np.zeros((3, 3)), np.zeros((4, 4))
    with pytest.raises(OsnasError, match="g_g_dist"):
        re_ranking(qg, qq, np.zeros((3, 3)))
    with pytest.raises(OsnasError, match="q_q_dist"):
        re_ranking(qg, np.zeros((4, 4)), gg)
    with pytest.raises(OsnasError, match="k1"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(OsnasError, match="lambda_value"):
        re_ranking(qg, qq, gg, lambda_value=2)
    with pytest.raises(OsnasError, match="without --rerank") as e:
        check_rerank_memory(11659, 82161, available=16 * 2**30)
    assert "93,820" in str(e.value) and "\n" not in str(e.value)
    check_rerank_memory(100, 200, available=16 * 2**30)  # fits: no error
    with pytest.raises(OsnasError, match="without --rerank"):
        re_ranking_features(np.zeros((10**6, 2), np.float32), np.zeros((10**6, 2), np.float32))
