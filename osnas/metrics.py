"""Re-ID evaluation: CMC, mAP (Zheng et al., ICCV 2015, Market-1501) and mINP (Ye et al., TPAMI 2021).

Semantics (identical to the usual re-ID evaluators, with ties made deterministic):

* For each query the gallery is ordered by distance, ascending. **Ties are broken by
  gallery index**: the order is exactly ``np.argsort(distmat[q], kind="stable")``.
  (The reference evaluators use an unstable sort, so on exact ties their numbers depend on
  the sort implementation; ours do not.)
* Gallery items with the same identity *and* the same camera as the query are removed;
  everything else stays: other identities, distractors (id 0), junk (id -1) if present.
  A *match* is a remaining item with the query's identity (plain ``pid`` equality).
* A query with no remaining match is skipped; if every query is skipped, `OsnasError`.
* CMC@k = fraction of valid queries whose first match is within the top k. ``max_rank``
  is clipped to the gallery size (as the reference does, which prints a note; we log it),
  so ``len(result["cmc"]) == min(max_rank, num_gallery)``.
* AP (non-interpolated) = mean over the R matches of (matches within the top k) / k at
  each match's rank k; INP = R / rank of the last match. mAP, mINP: means over valid queries.

Implementation: no full sort of the gallery. Per query only the ranks of its true matches
are needed; the rank of match m (1-based, stable order, among the kept items) is

    1 + #{kept v: d_v < d_m} + #{kept v: d_v == d_m, index_v < index_m}.

Per row, only the distances <= the query's largest match distance can count; those (often a
small part of the row) are gathered (compaction, or np.partition when many) and sorted, and
every match distance is located in them by binary search (#{< d_m} and #{<= d_m}). The
same-identity items (few per query: the matches and the removed same-camera items) are
handled exactly among themselves; where a non-match distance is exactly equal to a match
distance (rare with float features) the tie term is counted directly from the row, so the
result is always that of the stable sort. Rows are processed in blocks in a thread pool
(numpy releases the GIL). NaN distances sort last, like np.argsort; NaN at a true match is
an error.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from osnas.errors import OsnasError

log = logging.getLogger("osnas")

VALID_METRICS = ("cosine", "euclidean")

# Elements per block of query rows handed to one worker (bounds the temporary memory:
# roughly 8 to 17 bytes per element in the worst case, about 70 MB).
_BLOCK_ELEMS = 1 << 22


# ============================================================================ input checks
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise OsnasError(f"{name}: cannot be read as an array ({e})") from None


def _labels(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise OsnasError(f"{name}: expected a 1-D array of labels, got shape {tuple(a.shape)}")
    if n is not None and a.shape[0] != n:
        raise OsnasError(f"{name}: has {a.shape[0]} entries, expected {n}")
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        elif a.dtype.kind not in "USO":
            raise OsnasError(f"{name}: expected integer labels, got dtype {a.dtype}")
    return a


def _distmat(x: Any) -> np.ndarray:
    d = _to_numpy(x, "distmat")
    if d.ndim != 2:
        raise OsnasError(f"distmat: expected a 2-D (num_query, num_gallery) matrix, got shape {tuple(d.shape)}")
    if d.dtype == np.float16 or d.dtype.kind == "b":
        d = d.astype(np.float32)
    elif d.dtype.kind not in "fiu":
        raise OsnasError(f"distmat: expected real numbers, got dtype {d.dtype}")
    return d


def _check_max_rank(max_rank: Any) -> int:
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise OsnasError(f"max_rank: expected a positive integer, got {max_rank!r}")
    return int(max_rank)


def _num_workers() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


# ============================================================================ the engine
class _Evaluator:
    """Per-query results for a fixed gallery; fed with blocks of distance rows."""

    def __init__(self, q_pids, g_pids, q_camids, g_camids, *, sgs_repeats: int = 0, seed: int = 0):
        num_q, num_g = len(q_pids), len(g_pids)
        self.num_g = num_g
        labels, inv = np.unique(np.concatenate([g_pids, q_pids]), return_inverse=True)
        inv = inv.reshape(-1).astype(np.int64)
        self.g_code = inv[:num_g]
        self.q_code = inv[num_g:]
        self.g_cam = np.asarray(g_camids)
        self.q_cam = np.asarray(q_camids)
        # gallery items grouped by identity, each group in increasing gallery index
        self.g_order = np.argsort(self.g_code, kind="stable")
        counts = np.bincount(self.g_code, minlength=len(labels))
        self.g_count = counts
        self.g_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.first = np.zeros(num_q, np.int64)  # 0 = query skipped
        self.ap = np.zeros(num_q, np.float64)
        self.inp = np.zeros(num_q, np.float64)
        self.sgs_repeats = sgs_repeats
        self.seed = seed
        if sgs_repeats:
            self.sgs_first = np.zeros((num_q, sgs_repeats), np.int64)

    # ------------------------------------------------------------------ one block of rows
    def process(self, D: np.ndarray, q0: int) -> None:
        """Rank rows q0 .. q0+len(D)-1 of the distance matrix (D: their rows, C-contiguous)."""
        b, G = D.shape
        qc = self.q_code[q0:q0 + b]
        n_same = self.g_count[qc]
        E = int(n_same.sum())
        if E == 0:
            return
        # ---- same-identity entries (row, gallery index), row-major, gallery index ascending
        row = np.repeat(np.arange(b, dtype=np.int64), n_same)
        ends = np.cumsum(n_same)
        within = np.arange(E, dtype=np.int64) - np.repeat(ends - n_same, n_same)
        gidx = self.g_order[np.repeat(self.g_start[qc], n_same) + within]
        removed = self.g_cam[gidx] == self.q_cam[q0 + row]
        dv = D[row, gidx]
        # ---- stable order of the entries within each row: (row, distance, gallery index)
        o = np.lexsort((gidx, dv, row))
        srow, sd, sg, srem = row[o], dv[o], gidx[o], removed[o]
        pos = np.arange(E, dtype=np.int64)
        newrow = np.ones(E, bool)
        newrow[1:] = srow[1:] != srow[:-1]
        newgrp = newrow.copy()
        newgrp[1:] |= sd[1:] != sd[:-1]
        rs = np.maximum.accumulate(np.where(newrow, pos, 0))  # row start
        gs = np.maximum.accumulate(np.where(newgrp, pos, 0))  # tie-group start
        gid = np.cumsum(newgrp) - 1
        geq = np.bincount(gid)[gid]  # same-identity entries with exactly this distance
        cR = np.concatenate([[0], np.cumsum(srem)])
        sm = ~srem
        cM = np.concatenate([[0], np.cumsum(sm)])
        # keep the true matches only
        mpos = np.flatnonzero(sm)
        if mpos.size == 0:
            return
        mrow = srow[mpos]
        md = sd[mpos]
        if md.dtype.kind == "f" and np.isnan(md).any():
            raise OsnasError("distmat: NaN distance between a query and one of its true matches")
        mg = sg[mpos]
        before_removed = (cR[gs] - cR[rs])[mpos]  # removed items with a smaller distance
        tied_matches_before = (cM[pos] - cM[gs])[mpos]
        j_in_row = (cM[pos] - cM[rs])[mpos]  # 0-based index of the match among its row's matches
        geq_m = geq[mpos]
        # ---- counts over the whole row: #{d < d_m} and #{d <= d_m}
        lt, le = self._count(D, mrow, md)
        nonmatch_ties = le - lt - geq_m
        rank = 1 + lt - before_removed + tied_matches_before
        flagged = np.flatnonzero(nonmatch_ties > 0)
        if flagged.size:
            rank[flagged] += self._tied_nonmatches_before(D, qc, mrow[flagged], md[flagged], mg[flagged])
        # ---- per-query figures (ranks increase with j_in_row inside a row)
        last = np.ones(mpos.size, bool)
        last[:-1] = mrow[1:] != mrow[:-1]
        firstm = np.ones(mpos.size, bool)
        firstm[1:] = mrow[1:] != mrow[:-1]
        rows_valid = mrow[firstm]
        R = np.bincount(mrow, minlength=b)[rows_valid].astype(np.float64)
        ap_sum = np.bincount(mrow, weights=(j_in_row + 1) / rank, minlength=b)[rows_valid]
        qi = q0 + rows_valid
        self.first[qi] = rank[firstm]
        self.ap[qi] = ap_sum / R
        self.inp[qi] = R / rank[last]
        if self.sgs_repeats:
            self._single_gallery_shot(D, q0, qc, mrow, md, mg, rows_valid)

    # ------------------------------------------------------------------ counting
    def _count(self, D: np.ndarray, mrow: np.ndarray, md: np.ndarray):
        """For each (row, value): #{row items < value}, #{row items <= value}.

        `mrow` is ascending and `md` ascending within a row (stable order of the matches).
        Only the items <= the row's largest value can count, so only those are sorted.
        """
        return _count_rowwise(D, mrow, md)

    def _tied_nonmatches_before(self, D, qc, frow, fd, fg) -> np.ndarray:
        """Exact count of non-matches (other identity) with d == d_m and index < index_m.

        (frow, fd) sorted by row then value; one pass over the row per distinct value."""
        out = np.zeros(frow.size, np.int64)
        new = np.ones(frow.size, bool)
        new[1:] = (frow[1:] != frow[:-1]) | (fd[1:] != fd[:-1])
        bounds = np.flatnonzero(np.r_[new, True])
        for a, z in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            r = frow[a]
            idx = np.flatnonzero(D[r] == fd[a])  # ascending gallery indices
            idx = idx[self.g_code[idx] != qc[r]]
            out[a:z] = idx.searchsorted(fg[a:z])
        return out

    # ------------------------------------------------------------------ CUHK03 classic
    def _single_gallery_shot(self, D, q0, qc, mrow, md, mg, rows_valid):
        """One random gallery item per identity (the query's own: among its matches); rank of
        the sampled match among the sampled items, stable order; per repeat. The draws of
        query i depend only on (seed, i)."""
        present = np.flatnonzero(self.g_count > 0)
        reps = self.sgs_repeats
        starts = np.concatenate([[0], np.flatnonzero(mrow[1:] != mrow[:-1]) + 1, [mrow.size]])
        for k, r in enumerate(rows_valid):
            rng = np.random.default_rng([self.seed, q0 + int(r)])  # per query: independent of blocking
            a, z = starts[k], starts[k + 1]
            v = D[r]
            own = qc[r]
            others = present[present != own]
            u = rng.random((reps, others.size))
            cnt = self.g_count[others]
            pick = self.g_order[self.g_start[others] + np.minimum((u * cnt).astype(np.int64), cnt - 1)]
            mi = a + rng.integers(0, z - a, size=reps)
            dm, gm = md[mi], mg[mi]
            dp = v[pick]
            before = (dp < dm[:, None]) | ((dp == dm[:, None]) & (pick < gm[:, None]))
            self.sgs_first[q0 + r] = 1 + before.sum(1)

    # ------------------------------------------------------------------ result
    def result(self, max_rank: int) -> dict:
        valid = self.first > 0
        nv = int(valid.sum())
        if nv == 0:
            raise OsnasError("all queries have no match in the gallery (check the query/gallery ids and cameras)")
        if self.sgs_repeats:
            f = self.sgs_first[valid]
            hits = np.zeros(max_rank, np.float64)
            for rep in range(f.shape[1]):
                c = np.bincount(np.minimum(f[:, rep], max_rank + 1), minlength=max_rank + 2)[1:max_rank + 1]
                hits += np.cumsum(c)
            cmc = hits / (f.shape[1] * nv)
        else:
            c = np.bincount(np.minimum(self.first[valid], max_rank + 1), minlength=max_rank + 2)[1:max_rank + 1]
            cmc = np.cumsum(c) / nv
        return {
            "cmc": cmc.astype(np.float64),
            "mAP": float(np.mean(self.ap[valid])),
            "mINP": float(np.mean(self.inp[valid])),
            "num_valid": nv,
        }


# Per row, the items <= the row's largest match distance (c of them) are brought together
# in a reused buffer and sorted: by compaction (np.compress) when c is small, else by a
# selection (np.partition: SIMD introselect) of a copy of the row, which is cheaper than
# compaction once branch misprediction sets in and than sorting the whole row.
# (Threshold measured on 16k- and 82k-item rows.)
_COMPACT_FRAC = 0.03


def _count_rowwise(D, mrow, md):
    b, G = D.shape
    bounds = np.flatnonzero(np.r_[True, mrow[1:] != mrow[:-1], True])
    lt = np.empty(mrow.size, np.int64)
    le = np.empty(mrow.size, np.int64)
    buf = np.empty(G, D.dtype)
    for a, z in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        v = D[mrow[a]]
        t = md[a:z]  # ascending
        keep = v <= t[-1]
        c = int(np.count_nonzero(keep))
        if c <= _COMPACT_FRAC * G:
            s = np.compress(keep, v, out=buf[:c])
        else:
            buf[:] = v
            if c < G:
                buf.partition(c - 1)
            s = buf[:c]
        s.sort()
        lt[a:z] = s.searchsorted(t, side="left")
        le[a:z] = s.searchsorted(t, side="right")
    return lt, le


def _run_blocks(ev: _Evaluator, D: np.ndarray, q0: int, pool: ThreadPoolExecutor | None) -> None:
    """Split rows of D (global offset q0) into blocks and process them (in the pool)."""
    n, G = D.shape
    step = max(1, _BLOCK_ELEMS // max(G, 1))
    starts = range(0, n, step)

    def job(s):
        blk = np.ascontiguousarray(D[s:s + step])
        ev.process(blk, q0 + s)

    if pool is None or len(starts) == 1:
        for s in starts:
            job(s)
    else:
        for f in [pool.submit(job, s) for s in starts]:
            f.result()


def _sgs_args(single_gallery_shot, repeats, seed) -> int:
    if not single_gallery_shot:
        return 0
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise OsnasError(f"repeats: expected a positive integer, got {repeats!r}")
    return int(repeats)


# ============================================================================ public API
def _evaluator(q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int, max_rank, single_gallery_shot,
               repeats, seed):
    """Checked labels -> (_Evaluator, max_rank clipped to the gallery size)."""
    qp = _labels(q_pids, "q_pids", num_q)
    gp = _labels(g_pids, "g_pids", num_g)
    qc = _labels(q_camids, "q_camids", num_q)
    gc = _labels(g_camids, "g_camids", num_g)
    max_rank = _clip_max_rank(_check_max_rank(max_rank), num_g)
    reps = _sgs_args(single_gallery_shot, repeats, seed)
    return _Evaluator(qp, gp, qc, gc, sgs_repeats=reps, seed=int(seed)), max_rank


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                  single_gallery_shot: bool = False, repeats: int = 10, seed: int = 0) -> dict:
    """CMC, mAP and mINP from a (num_query, num_gallery) distance matrix.

    Accepts numpy arrays or torch tensors. Returns ``{"cmc": ndarray (min(max_rank,
    num_gallery),), "mAP": float, "mINP": float, "num_valid": int}``; see the module
    docstring for the exact semantics (stable tie order, removal, skipping, clipping).

    ``single_gallery_shot=True`` gives the CUHK03 classic metric: for the CMC, one gallery
    item per identity is drawn at random (the query's own identity: among its true
    matches), ``repeats`` draws averaged, seeded by ``seed``; mAP and mINP are computed on
    the full gallery, as in the reference.
    """
    D = _distmat(distmat)
    num_q, num_g = D.shape
    if num_q == 0 or num_g == 0:
        raise OsnasError(f"distmat: empty matrix of shape {tuple(D.shape)}")
    ev, max_rank = _evaluator(q_pids, g_pids, q_camids, g_camids, num_q, num_g, max_rank, single_gallery_shot,
                              repeats, seed)
    nw = _num_workers()
    if nw > 1 and num_q * num_g > _BLOCK_ELEMS:
        with ThreadPoolExecutor(nw) as pool:
            _run_blocks(ev, D, 0, pool)
    else:
        _run_blocks(ev, D, 0, None)
    return ev.result(max_rank)


def _clip_max_rank(max_rank: int, num_g: int) -> int:
    if num_g < max_rank:
        log.info("note: the gallery has only %d items; max_rank clipped from %d to %d", num_g, max_rank, num_g)
        return num_g
    return max_rank


def _features(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise OsnasError(f"{name}: expected real-valued features, got dtype {x.dtype}")
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except Exception as e:
            raise OsnasError(f"{name}: cannot be read as a feature matrix ({e})") from None
    x = x.detach()
    if x.ndim != 2:
        raise OsnasError(f"{name}: expected a 2-D (num_items, dim) feature matrix, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        if x.dtype.is_complex:
            raise OsnasError(f"{name}: expected real-valued features, got {x.dtype}")
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise OsnasError(f"{name}: contains NaN or infinite values")
    return x


def _check_metric(metric: Any) -> str:
    if metric not in VALID_METRICS:
        raise OsnasError(f"metric: unknown {metric!r}; expected one of {', '.join(VALID_METRICS)}")
    return metric


def _check_pair(qf: torch.Tensor, gf: torch.Tensor) -> None:
    if qf.shape[1] != gf.shape[1]:
        raise OsnasError(f"features: query dim {qf.shape[1]} != gallery dim {gf.shape[1]}")
    if qf.shape[0] == 0 or gf.shape[0] == 0:
        raise OsnasError(f"features: empty query ({qf.shape[0]}) or gallery ({gf.shape[0]}) set")


class _DistanceRows:
    """Rows of the distance matrix, computed like the reference (torchreid) does."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str):
        self.metric = metric
        if gf.device != qf.device:
            qf = qf.to(gf.device)
        if metric == "cosine":
            self.q = torch.nn.functional.normalize(qf, p=2, dim=1)
            self.gt = torch.nn.functional.normalize(gf, p=2, dim=1).t()
        else:
            self.q = qf
            self.gt = gf.t()
            self.g2 = gf.pow(2).sum(dim=1).unsqueeze(0)  # (1, G)
            self.q2 = qf.pow(2).sum(dim=1, keepdim=True)  # (Q, 1)

    def rows(self, a: int, z: int) -> torch.Tensor:
        q = self.q[a:z]
        if self.metric == "cosine":
            d = torch.mm(q, self.gt)
            d.neg_().add_(1.0)  # 1 - cos, one rounding: same values as `1 - mm`
            return d
        d = self.q2[a:z] + self.g2  # (b, G): ||q||^2 + ||g||^2 ...
        d.addmm_(q, self.gt, beta=1, alpha=-2)  # ... - 2 q.g  (squared euclidean)
        return d


def compute_distance_matrix(qf, gf, metric: str = "cosine") -> torch.Tensor:
    """Full (num_query, num_gallery) float32 distance matrix as a torch tensor (on gf's device).

    cosine: 1 - cos of the L2-normalised features; euclidean: the *squared* euclidean
    distance, computed as ||q||^2 + ||g||^2 - 2 q.g, as in the reference.
    """
    metric = _check_metric(metric)
    qf, gf = _features(qf, "qf"), _features(gf, "gf")
    _check_pair(qf, gf)
    return _DistanceRows(qf, gf, metric).rows(0, qf.shape[0])


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric: str = "cosine",
                      max_rank: int = 50, chunk_size: int = 2048, *, single_gallery_shot: bool = False,
                      repeats: int = 10, seed: int = 0) -> dict:
    """`evaluate_rank` from features without ever holding the whole distance matrix.

    Distances are computed for ``chunk_size`` queries at a time (peak extra memory about
    ``chunk_size * num_gallery * 4`` bytes plus the ranking's per-block temporaries), ranked
    and accumulated. Same results as ``evaluate_rank(compute_distance_matrix(qf, gf,
    metric), ...)`` up to float rounding of the distances (a matrix product may round the
    last bit differently for different chunk shapes; this matters only for exact near-ties).
    """
    metric = _check_metric(metric)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise OsnasError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    qf, gf = _features(qf, "qf"), _features(gf, "gf")
    _check_pair(qf, gf)
    num_q, num_g = qf.shape[0], gf.shape[0]
    ev, max_rank = _evaluator(q_pids, g_pids, q_camids, g_camids, num_q, num_g, max_rank, single_gallery_shot,
                              repeats, seed)
    rows = _DistanceRows(qf, gf, metric)
    nw = _num_workers()
    pool = ThreadPoolExecutor(nw) if nw > 1 else None
    try:
        with torch.no_grad():
            for a in range(0, num_q, int(chunk_size)):
                z = min(num_q, a + int(chunk_size))
                D = rows.rows(a, z).cpu().numpy()
                _run_blocks(ev, D, a, pool)
                del D
    finally:
        if pool is not None:
            pool.shutdown()
    return ev.result(max_rank)


def evaluate_rank_naive(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """The definitions, written out for one query at a time (slow; the fast path is checked
    against it). For each query: order the gallery by a stable sort, drop same-identity
    same-camera items, and read off the 1-based ranks r_1 < ... < r_R of its R true matches;
    then CMC@k = [r_1 <= k], AP = mean_j (j / r_j), INP = R / r_R."""
    D = _distmat(distmat)
    num_q, num_g = D.shape
    qp = _labels(q_pids, "q_pids", num_q)
    gp = _labels(g_pids, "g_pids", num_g)
    qc = _labels(q_camids, "q_camids", num_q)
    gc = _labels(g_camids, "g_camids", num_g)
    max_rank = _clip_max_rank(_check_max_rank(max_rank), num_g)
    ks = np.arange(1, max_rank + 1)
    hits, aps, inps = [], [], []
    for i in range(num_q):
        ranked = [j for j in np.argsort(D[i], kind="stable") if not (gp[j] == qp[i] and gc[j] == qc[i])]
        ranks = np.array([pos + 1 for pos, j in enumerate(ranked) if gp[j] == qp[i]], dtype=np.float64)
        if ranks.size == 0:  # no true match left: the query does not count
            continue
        hits.append(ks >= ranks[0])
        aps.append(float(np.mean(np.arange(1, ranks.size + 1) / ranks)))
        inps.append(ranks.size / ranks[-1])
    if not hits:
        raise OsnasError("all queries have no match in the gallery (check the query/gallery ids and cameras)")
    return {"cmc": np.mean(np.asarray(hits, dtype=np.float64), axis=0), "mAP": float(np.mean(aps)),
            "mINP": float(np.mean(inps)), "num_valid": len(hits)}


__all__ = [
    "VALID_METRICS",
    "compute_distance_matrix",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_rank_naive",
]
