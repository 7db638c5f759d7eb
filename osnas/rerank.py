"""k-reciprocal re-ranking (Zhong et al., CVPR 2017: "Re-ranking Person Re-identification
with k-reciprocal Encoding"); defaults k1=20, k2=6, lambda=0.3.

Same semantics as the widely used public implementation (the distance-matrix version):

* O = [[q_q, q_g], [q_g^T, g_g]] (all Q+G items), squared element-wise, each column divided
  by its maximum, then transposed: T[i, j] = O[j, i]^2 / max_r O[r, i]^2.
* initial ranking of every row of T (ties: by index, i.e. a stable sort);
  k-reciprocal neighbours R(i) = {j in top(k1+1) of i : i in top(k1+1) of j};
  expansion: for each j in R(i), its half set R_half(j) (with round(k1/2) instead of k1)
  is added when |R_half(j) & R(i)| > 2/3 |R_half(j)|;
  V[i, j] = exp(-T[i, j]) / sum over the expanded set, for j in it (0 elsewhere).
* local query expansion (k2 != 1): V[i] <- mean of V over the k2 first items of i's ranking.
* Jaccard distance d_J(i, j) = 1 - m / (2 - m), m = sum_k min(V[i, k], V[j, k]).
* final = (1 - lambda) d_J + lambda T, restricted to query rows and gallery columns.

This implementation never builds a dense (Q+G)^2 array of its own: it reads the three input
matrices block by block, keeps only the top-(k1+1) neighbours, holds V as a sparse matrix and
accumulates the Jaccard terms per block of queries. The inputs themselves are (Q+G)^2 numbers,
so `re_ranking_features` (which computes them) first checks that they fit in memory and
raises `OsnasError` otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from osnas.errors import OsnasError

_ROW_BLOCK_ELEMS = 1 << 23  # elements of T per row block (32 MB in float32)
_PAIR_BLOCK = 1 << 22  # (query, gallery) min-terms per Jaccard block


# ============================================================================ memory guard
def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def rerank_memory_bytes(num_query: int, num_gallery: int, k1: int = 20, with_inputs: bool = True) -> int:
    """Rough peak memory of re-ranking: the (Q+G)^2 float32 input distances (if counted),
    the (Q, G) result and the Jaccard accumulator, row blocks, the sparse V."""
    n = num_query + num_gallery
    b = 0
    if with_inputs:
        b += 4 * (num_query * num_query + 2 * num_query * num_gallery + num_gallery * num_gallery)
    b += 4 * num_query * num_gallery * 3  # result, squared q-g part, accumulator
    b += 8 * n * (k1 + 1) * (k1 + 1) // 2 + 8 * 4 * n * 256  # neighbours, expansion, sparse V
    b += 8 * 6 * _ROW_BLOCK_ELEMS + 40 * _PAIR_BLOCK
    return int(b)


def check_rerank_memory(num_query: int, num_gallery: int, k1: int = 20, with_inputs: bool = True,
                        available: int | None = None) -> None:
    """Raise `OsnasError` when re-ranking Q queries against G gallery items would not fit."""
    need = rerank_memory_bytes(num_query, num_gallery, k1, with_inputs)
    avail = _available_memory() if available is None else available
    if avail is not None and need > 0.8 * avail:
        n = num_query + num_gallery
        raise OsnasError(
            f"re-ranking {num_query:,} queries x {num_gallery:,} gallery items needs the "
            f"(Q+G)^2 = {n:,}^2 distance matrix (about {need / 2**30:.1f} GiB in all) but only "
            f"{avail / 2**30:.1f} GiB of memory is available; run without --rerank"
        )


# ============================================================================ helpers
def _mat(x: Any, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        want = f"shape {shape}" if shape is not None else "a 2-D matrix"
        raise OsnasError(f"{name}: expected {want}, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiu":
        raise OsnasError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise OsnasError(f"{name}: contains NaN or infinite values")
    return a


def _check_params(k1, k2, lambda_value):
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise OsnasError(f"{name}: expected a positive integer, got {v!r}")
    try:
        lam = float(lambda_value)
    except (TypeError, ValueError):
        raise OsnasError(f"lambda_value: expected a number in [0, 1], got {lambda_value!r}") from None
    if not 0.0 <= lam <= 1.0:
        raise OsnasError(f"lambda_value: expected a number in [0, 1], got {lambda_value!r}")
    return int(k1), int(k2), lam


class _Columns:
    """Columns of O = [[q_q, q_g], [q_g^T, g_g]], squared, as rows (i.e. rows of O^T)."""

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.Q, self.G = q_g.shape
        self.N = self.Q + self.G

    def rows(self, a: int, z: int) -> np.ndarray:
        """(z - a, N) float32: row i of the result = column i of O, squared."""
        Q = self.Q
        out = np.empty((z - a, self.N), np.float32)
        # rows of O^T that are query columns: [q_q[:, i] ; q_g[i, :]]
        qa, qz = min(a, Q), min(z, Q)
        # squared in the input's precision, stored as float32 (like the reference)
        sq = lambda src, dst: np.square(src, out=dst, casting="unsafe")  # noqa: E731
        if qz > qa:
            sq(self.q_q[:, qa:qz].T, out[: qz - qa, :Q])
            sq(self.q_g[qa:qz], out[: qz - qa, Q:])
        ga, gz = max(a, Q) - Q, max(z, Q) - Q
        if gz > ga:
            o = qz - qa
            sq(self.q_g[:, ga:gz].T, out[o:, :Q])
            sq(self.g_g[:, ga:gz].T, out[o:, Q:])  # a transposing copy: the costly part
        return out

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """O[j, i]^2 for index arrays i, j (float32)."""
        Q = self.Q
        out = np.empty(i.shape, np.result_type(self.q_g, self.q_q, self.g_g))
        iq, jq = i < Q, j < Q
        m = iq & jq
        out[m] = self.q_q[j[m], i[m]]
        m = ~iq & jq
        out[m] = self.q_g[j[m], i[m] - Q]
        m = iq & ~jq
        out[m] = self.q_g[i[m], j[m] - Q]
        m = ~iq & ~jq
        out[m] = self.g_g[j[m] - Q, i[m] - Q]
        return np.square(out).astype(np.float32)


def _topk_stable(block: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest per row, in the order of a stable argsort (ties by index)."""
    n = block.shape[1]
    if k >= n:
        return np.argsort(block, axis=1, kind="stable")
    part = np.argpartition(block, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(block, part, axis=1)
    thr = vals.max(axis=1)
    # rows where the k-th value is tied with values left out: take the lowest indices
    n_lt = np.count_nonzero(block < thr[:, None], axis=1)
    n_eq = np.count_nonzero(block == thr[:, None], axis=1)
    for r in np.flatnonzero(n_lt + n_eq > k):
        row = block[r]
        lt = np.flatnonzero(row < thr[r])
        eq = np.flatnonzero(row == thr[r])[: k - lt.size]
        part[r] = np.concatenate([lt, eq])
        vals[r] = row[part[r]]
    order = np.lexsort((part, vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _reciprocal_mask(R: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """recip[i, a] = i is among the neighbours of R[i, a] (R: (N, k) neighbour lists)."""
    N, k = R.shape
    out = np.empty((N, k), bool)
    for a in range(0, N, chunk):
        z = min(N, a + chunk)
        out[a:z] = (R[R[a:z]] == np.arange(a, z)[:, None, None]).any(-1)
    return out


# ============================================================================ public API
def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked (num_query, num_gallery) float32 distance matrix (numpy).

    Inputs: query-gallery (Q, G), query-query (Q, Q) and gallery-gallery (G, G) distances
    (numpy arrays or torch tensors), e.g. from `osnas.metrics.compute_distance_matrix`.
    """
    k1, k2, lam = _check_params(k1, k2, lambda_value)
    qg = _mat(q_g_dist, "q_g_dist")
    Q, G = qg.shape
    if Q == 0 or G == 0:
        raise OsnasError(f"q_g_dist: empty matrix of shape {(Q, G)}")
    qq = _mat(q_q_dist, "q_q_dist", (Q, Q))
    gg = _mat(g_g_dist, "g_g_dist", (G, G))
    check_rerank_memory(Q, G, k1, with_inputs=False)
    cols = _Columns(qg, qq, gg)
    N = cols.N
    k_fw = min(k1 + 1, N)
    k_half = min(int(np.around(k1 / 2.0)) + 1, N)
    colmax, top = _initial_rankings(cols, max(k_fw, min(k2, N)))
    V = _reciprocal_weights(cols, colmax, top[:, :k_fw], top[:, :k_half])
    if k2 != 1:
        V = _expand_queries(V, top[:, :min(k2, N)])
    del top
    return _jaccard(V, cols, colmax, Q, G, lam)


def _initial_rankings(cols: "_Columns", k_top: int) -> tuple:
    """The column maxima of the original distance (O^2, the row maxima of the blocks) and every
    item's `k_top` nearest neighbours by it: ((N,) float32, (N, k_top) int64)."""
    N = cols.N
    step = max(1, _ROW_BLOCK_ELEMS // N)
    colmax = np.empty(N, np.float32)
    top = np.empty((N, k_top), np.int64)
    for a in range(0, N, step):
        z = min(N, a + step)
        blk = cols.rows(a, z)
        m = blk.max(axis=1)
        m[m == 0] = 1.0  # an all-zero column: leave it as is rather than divide by zero
        colmax[a:z] = m
        blk /= m[:, None]
        top[a:z] = _topk_stable(blk, k_top)
    return colmax, top


def _reciprocal_weights(cols: "_Columns", colmax: np.ndarray, R: np.ndarray, H: np.ndarray):
    """V: each item's k-reciprocal neighbours R(i) (R: its k1+1 nearest), expanded by the
    half-reciprocal neighbours of a candidate sharing more than 2/3 of them (H: the k1/2+1
    nearest), weighted by exp(-distance) and normalised per row; a sparse (N, N) float32 matrix."""
    N, k_fw, k_half = cols.N, R.shape[1], H.shape[1]
    recip = _reciprocal_mask(R)
    half_recip = _reciprocal_mask(H)
    h_size = half_recip.sum(1)
    rows_l, cols_l = [], []
    chunk = max(1, (1 << 22) // (k_fw * k_half * k_fw))
    for a in range(0, N, chunk):
        z = min(N, a + chunk)
        Ri, ri = R[a:z], recip[a:z]  # (b, k_fw)
        kr = np.where(ri, Ri, -1)  # R(i), -1 = absent
        Hc = H[Ri]  # (b, k_fw, k_half): half neighbours of each candidate
        hm = half_recip[Ri]  # which of them are half-reciprocal
        member = (Hc[..., None] == kr[:, None, None, :]).any(-1) & hm
        inter = member.sum(-1)
        accept = ri & (inter > (2.0 / 3.0) * h_size[Ri])
        add = np.where(accept[..., None] & hm, Hc, -1).reshape(z - a, -1)
        allc = np.concatenate([kr, add], axis=1)
        allc.sort(axis=1)
        keep = allc >= 0
        keep[:, 1:] &= allc[:, 1:] != allc[:, :-1]
        r_idx, c_pos = np.nonzero(keep)
        rows_l.append(r_idx + a)
        cols_l.append(allc[r_idx, c_pos])
    vi = np.concatenate(rows_l)
    vj = np.concatenate(cols_l)
    w = np.exp(-(cols.pairs(vi, vj) / colmax[vi]))  # float32, like the reference
    wsum = np.bincount(vi, weights=w, minlength=N).astype(np.float32)
    return sp.csr_matrix(((w / wsum[vi]).astype(np.float32), (vi, vj)), shape=(N, N))


def _expand_queries(V, top: np.ndarray):
    """Local query expansion: each row of V replaced by the mean of its k2 nearest items' rows."""
    N, kq = top.shape
    A = sp.csr_matrix((np.ones(N * kq, np.float32), (np.repeat(np.arange(N), kq), top.reshape(-1))), shape=(N, N))
    V = (A @ V).tocsr()
    V.data /= np.float32(kq)
    V.eliminate_zeros()
    return V


def _jaccard(V, cols: "_Columns", colmax: np.ndarray, Q: int, G: int, lam: float) -> np.ndarray:
    """The Jaccard distance of query rows against gallery rows of V, accumulated by blocks of
    queries, mixed with the original distance: (Q, G) float32."""
    Vq = V[:Q].tocsr()
    Vg = V[Q:].tocsc()  # column k -> gallery rows j with V[j, k] != 0
    g_ptr = Vg.indptr
    n_col = np.diff(g_ptr)
    out = np.empty((Q, G), np.float32)
    per_row = np.bincount(np.repeat(np.arange(Q), np.diff(Vq.indptr)), weights=n_col[Vq.indices], minlength=Q)
    a = 0
    while a < Q:
        z, tot = a, 0
        while z < Q and (z == a or (tot + per_row[z] <= _PAIR_BLOCK and (z - a + 1) * G <= _ROW_BLOCK_ELEMS)):
            tot += per_row[z]
            z += 1
        s, e = Vq.indptr[a], Vq.indptr[z]
        k = Vq.indices[s:e]
        av = Vq.data[s:e]
        ri = np.repeat(np.arange(z - a), np.diff(Vq.indptr[a:z + 1]))
        cnt = n_col[k]
        P = int(cnt.sum())
        acc = np.zeros((z - a) * G, np.float64)
        if P:
            first = np.repeat(g_ptr[k] - np.cumsum(cnt) + cnt, cnt) + np.arange(P)
            j = Vg.indices[first]
            mins = np.minimum(np.repeat(av, cnt), Vg.data[first])
            acc = np.bincount(np.repeat(ri, cnt) * G + j, weights=mins, minlength=(z - a) * G)
        m = acc.reshape(z - a, G).astype(np.float32)
        jac = 1 - m / (2.0 - m)
        orig = np.square(cols.q_g[a:z]).astype(np.float32) / colmax[a:z, None]  # T[query, gallery]
        out[a:z] = jac * (1 - lam) + orig * lam
        a = z
    return out


def re_ranking_features(qf, gf, metric: str = "euclidean", k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> np.ndarray:
    """Compute the three distance matrices from features (after checking that they fit in
    memory) and re-rank. Returns the (Q, G) re-ranked distances."""
    from osnas.metrics import compute_distance_matrix

    k1, k2, lam = _check_params(k1, k2, lambda_value)
    nq, ng = len(qf), len(gf)
    check_rerank_memory(nq, ng, k1, with_inputs=True)
    q_g = compute_distance_matrix(qf, gf, metric).numpy()
    q_q = compute_distance_matrix(qf, qf, metric).numpy()
    g_g = compute_distance_matrix(gf, gf, metric).numpy()
    return re_ranking(q_g, q_q, g_g, k1, k2, lam)


__all__ = ["re_ranking", "re_ranking_features", "check_rerank_memory", "rerank_memory_bytes"]
