#!/usr/bin/env python
"""Benchmark of the evaluation metrics (osnas.metrics).

(a) Market-1501 size: 3,368 queries x 15,913 gallery (750 identities with ~17.5 gallery
    images each over 6 cameras, i.e. ~14.6 true matches per query after same-camera removal,
    plus 2,798 distractors with id 0), cosine distances of synthetic 512-d features at three
    difficulty levels (in-domain-like, cross-domain-like, random). Times:
      - osnas.metrics.evaluate_rank (best of --repeats),
      - the straightforward per-query evaluator (one full stable argsort per query, the
        reference algorithm written in numpy: osnas.metrics.evaluate_rank_naive), run on
        --naive-queries queries (default: all) and extrapolated to all if fewer,
      - a full np.argsort of the matrix alone (what any sort-based evaluator pays at least),
    and checks that our numbers equal the straightforward evaluator's on the same queries.
(b) MSMT17 size: 11,659 queries x 82,161 gallery, 512-d features (3,060 identities,
    15 cameras): time of the distance computation alone (same chunks, results discarded) vs
    evaluate_features (distances + ranking), interleaved, best of --msmt-repeats; peak
    memory of each phase = peak resident set size above the phase's starting RSS, sampled
    every 5 ms from /proc/self/statm by a background thread (ru_maxrss of the whole process
    is printed too, as a cross-check).

Other processes may share the CPU: every figure is a best of N, the ratios printed are
taken from this one run, and the CPU time of this process (all its threads, from
time.process_time) is printed next to the wall time: under contention it is the steadier
measure of the work done.

    python experiments/benchmarks/bench_eval.py [--json out.json] [--quick] [--skip-msmt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

import numpy as np
import torch

from osnas.metrics import _DistanceRows, evaluate_features, evaluate_rank, evaluate_rank_naive

PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- data
def make_split(rng, nq, ng, n_ids, n_cams, n_distractors):
    """Identities/cameras like a re-ID test split: every query identity is in the gallery."""
    n_real = ng - n_distractors
    g_pids = np.concatenate([np.zeros(n_distractors, np.int64), rng.integers(1, n_ids + 1, n_real)])
    g_cams = rng.integers(0, n_cams, ng)
    q_pids = rng.integers(1, n_ids + 1, nq)
    q_cams = rng.integers(0, n_cams, nq)
    return q_pids, g_pids, q_cams, g_cams


def make_features(rng, pids, centers, signal, dim, chunk=8192):
    """signal * identity centre + unit noise (distractors: noise only), float32, chunked."""
    out = np.empty((len(pids), dim), np.float32)
    for a in range(0, len(pids), chunk):
        p = pids[a:a + chunk]
        f = rng.standard_normal((len(p), dim), dtype=np.float32)
        f += signal * centers[p] * (p > 0)[:, None]
        out[a:a + chunk] = f
    return out


def best_of(fn, n):
    """(best wall seconds, CPU seconds of that run (all threads of this process), result)."""
    best, cpu, res = float("inf"), float("nan"), None
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        w = time.perf_counter() - t
        if w < best:
            best, cpu = w, time.process_time() - c
    return best, cpu, res


def same(a, b):
    return (a["num_valid"] == b["num_valid"] and np.array_equal(a["cmc"], b["cmc"])
            and abs(a["mAP"] - b["mAP"]) <= 1e-12 and abs(a["mINP"] - b["mINP"]) <= 1e-12)


def max_rel_diff(a, b):
    return max(float(np.max(np.abs(a["cmc"] - b["cmc"]))), abs(a["mAP"] - b["mAP"]), abs(a["mINP"] - b["mINP"]))


# ----------------------------------------------------------------------------- memory
class PeakRSS:
    """Peak RSS above the starting RSS while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.delta = self.peak - self.start


# ----------------------------------------------------------------------------- (a)
def bench_market(args, out):
    nq, ng = (3368, 15913) if not args.quick else (800, 4000)
    rng = np.random.default_rng(0)
    qp, gp, qc, gc = make_split(rng, nq, ng, 750, 6, 2798 if not args.quick else 700)
    dim = 512
    centers = rng.standard_normal((751, dim), dtype=np.float32)
    matches = np.array([np.count_nonzero((gp == p) & (gc != c)) for p, c in zip(qp, qc)])
    print(f"\n(a) Market-1501 size: {nq} x {ng} distance matrix, {len(np.unique(gp[gp > 0]))} ids, "
          f"{np.count_nonzero(gp == 0)} distractors, {matches.mean():.1f} true matches per query "
          f"(after same-camera removal), float32 cosine distances")
    rows = []
    for name, signal in (("in-domain-like", 0.45), ("cross-domain-like", 0.38), ("random", 0.0)):
        qf = make_features(rng, qp, centers, signal, dim)
        gf = make_features(rng, gp, centers, signal, dim)
        D = _DistanceRows(torch.from_numpy(qf), torch.from_numpy(gf), "cosine").rows(0, nq).numpy()
        t_ours, c_ours, r = best_of(lambda: evaluate_rank(D, qp, gp, qc, gc), args.repeats)
        t_sort, c_sort, _ = best_of(lambda: np.argsort(D, axis=1), max(1, args.repeats // 2))
        nn = nq if args.naive_queries <= 0 else min(nq, args.naive_queries)
        t0 = time.perf_counter()
        rn = evaluate_rank_naive(D[:nn], qp[:nn], gp, qc[:nn], gc)
        t_naive = (time.perf_counter() - t0) * nq / nn
        r_sub = r if nn == nq else evaluate_rank(D[:nn], qp[:nn], gp, qc[:nn], gc)
        row = {
            "case": name, "mAP": r["mAP"], "mINP": r["mINP"], "rank1": float(r["cmc"][0]),
            "ours_s": t_ours, "ours_cpu_s": c_ours, "np_argsort_s": t_sort, "np_argsort_cpu_s": c_sort,
            "naive_s": t_naive, "naive_queries": nn,
            "naive_extrapolated": nn < nq, "identical_to_naive": same(r_sub, rn),
            "max_abs_diff_vs_naive": max_rel_diff(r_sub, rn),
            "speedup_vs_argsort": t_sort / t_ours, "speedup_vs_naive": t_naive / t_ours,
        }
        rows.append(row)
        print(f"  {name:18s} mAP {r['mAP']:.3f} mINP {r['mINP']:.3f} R1 {r['cmc'][0]:.3f} | ours {t_ours:6.3f}s (cpu {c_ours:5.2f}s)"
              f" | np.argsort alone {t_sort:6.3f}s (cpu {c_sort:5.2f}s; {t_sort / t_ours:4.1f}x)"
              f" | naive {t_naive:6.2f}s{' (extrapolated from %d q)' % nn if nn < nq else ''} ({t_naive / t_ours:5.1f}x)"
              f" | identical: {row['identical_to_naive']} (max diff {row['max_abs_diff_vs_naive']:.1e})", flush=True)
        del D
    out["market"] = {"num_query": nq, "num_gallery": ng, "mean_matches": float(matches.mean()), "cases": rows}


# ----------------------------------------------------------------------------- (b)
def bench_msmt(args, out):
    nq, ng, dim = (11659, 82161, 512) if not args.quick else (2000, 12000, 512)
    rng = np.random.default_rng(1)
    qp, gp, qc, gc = make_split(rng, nq, ng, 3060, 15, 0)
    centers = rng.standard_normal((3061, dim), dtype=np.float32)
    qf = torch.from_numpy(make_features(rng, qp, centers, 0.38, dim))
    gf = torch.from_numpy(make_features(rng, gp, centers, 0.38, dim))
    cs = args.chunk_size
    print(f"\n(b) MSMT17 size: {nq} x {ng}, {dim}-d float32 features, cosine, chunk_size {cs}, "
          f"{torch.get_num_threads()} torch threads", flush=True)

    def dist_only():
        rows = _DistanceRows(qf, gf, "cosine")
        with torch.no_grad():
            for a in range(0, nq, cs):
                d = rows.rows(a, min(nq, a + cs))
                del d

    def full_eval():
        return evaluate_features(qf, gf, qp, gp, qc, gc, metric="cosine", chunk_size=cs)

    t_d, t_e, c_d, c_e, m_d, m_e, r = [], [], [], [], 0, 0, None
    for i in range(args.msmt_repeats):
        with PeakRSS() as p:
            t, c = time.perf_counter(), time.process_time()
            dist_only()
            t_d.append(time.perf_counter() - t)
            c_d.append(time.process_time() - c)
        m_d = max(m_d, p.delta)
        with PeakRSS() as p:
            t, c = time.perf_counter(), time.process_time()
            r = full_eval()
            t_e.append(time.perf_counter() - t)
            c_e.append(time.process_time() - c)
        m_e = max(m_e, p.delta)
        print(f"  repeat {i + 1}: distances alone {t_d[-1]:.2f}s (cpu {c_d[-1]:.2f}s), "
              f"evaluate_features {t_e[-1]:.2f}s (cpu {c_e[-1]:.2f}s)", flush=True)
    flops = 2.0 * nq * ng * dim
    res = {
        "num_query": nq, "num_gallery": ng, "dim": dim, "chunk_size": cs,
        "distance_s": min(t_d), "evaluate_features_s": min(t_e), "ratio": min(t_e) / min(t_d),
        "distance_cpu_s": min(c_d), "evaluate_features_cpu_s": min(c_e), "cpu_ratio": min(c_e) / min(c_d),
        "distance_gflops": flops / min(t_d) / 1e9,
        "peak_rss_delta_distance_mb": m_d / 2**20, "peak_rss_delta_evaluate_mb": m_e / 2**20,
        "process_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mAP": r["mAP"], "mINP": r["mINP"], "rank1": float(r["cmc"][0]),
    }
    print(f"  best: distances alone {res['distance_s']:.2f}s ({res['distance_gflops']:.0f} GFLOP/s), "
          f"evaluate_features {res['evaluate_features_s']:.2f}s -> ratio {res['ratio']:.2f}x "
          f"(CPU time: {res['distance_cpu_s']:.2f}s vs {res['evaluate_features_cpu_s']:.2f}s -> {res['cpu_ratio']:.2f}x)")
    print(f"  peak RSS above start: distances alone {res['peak_rss_delta_distance_mb']:.0f} MiB, "
          f"evaluate_features {res['peak_rss_delta_evaluate_mb']:.0f} MiB "
          f"(process ru_maxrss {res['process_ru_maxrss_mb']:.0f} MiB incl. the features)")
    print(f"  mAP {r['mAP']:.3f} mINP {r['mINP']:.4f} R1 {r['cmc'][0]:.3f}")
    out["msmt"] = res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--repeats", type=int, default=5, help="best of N for the Market-size timings")
    ap.add_argument("--msmt-repeats", type=int, default=2, help="best of N for the MSMT-size timings")
    ap.add_argument("--naive-queries", type=int, default=0,
                    help="run the straightforward evaluator on this many queries and extrapolate (0 = all)")
    ap.add_argument("--chunk-size", type=int, default=2048)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--skip-market", action="store_true")
    ap.add_argument("--skip-msmt", action="store_true")
    args = ap.parse_args(argv)
    out = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "numpy": np.__version__, "torch": torch.__version__, "load_avg_start": os.getloadavg()}
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    if not args.skip_market:
        bench_market(args, out)
    if not args.skip_msmt:
        bench_msmt(args, out)
    out["load_avg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
