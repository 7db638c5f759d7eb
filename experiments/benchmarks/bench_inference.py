"""Inference speed of OSNet-AIN x1.0 (256x128, batch 32): plain forward vs the deploy paths.

    python experiments/benchmarks/bench_inference.py                 # eager + jit backends
    python experiments/benchmarks/bench_inference.py --backends eager,jit,inductor
    python experiments/benchmarks/bench_inference.py --rank1         # + bf16 vs fp32 retrieval

Measures, in the same run and interleaved round by round (so that load from other
processes hits every variant alike), the best-of-N images/s of
  (a) the plain eval-mode forward of the osnas OSNet (`model.eval()(x)` under inference_mode),
  (b) `optimize_for_inference(model, bf16=False, backend=B)` (BN folded, channels-last),
  (c) `optimize_for_inference(model, bf16=True, backend=B)`,
for each backend B, with the ratios to (a), the fp32 relative error of (b) against (a), and
the fraction of the compute limit reached (OSNet x1.0 at 256x128: ~1.96 GFLOP per image; measured on this 2-core machine: ~95
GFLOP/s fp32 and ~360 GFLOP/s bf16 matrix-multiply peak on this 2-core machine).

--rank1: no training here. Builds a retrieval set (the built-in synthetic domains via
osnas.data when available, else random images: noisy copies of smooth per-identity
prototypes) and compares rank-1 and mAP (cosine, all-vs-all per domain) of the fp32 and
bf16 optimised paths, plus how often both return the same top-1 gallery image (target:
rank-1 within 0.5 points). Use trained weights (--checkpoint or --weights) for a
meaningful figure: a random network either maps every image to nearly the same embedding
(initial BN statistics) or, with --bn-recalibrate (forward-only re-estimation on training
images), amplifies rounding differences chaotically (the printed "conditioning" line shows
how far even fp32 rounding differences grow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

GFLOP_PER_IMAGE = 1.96  # 2 x 978.9M MACs (OSNet x1.0, 256x128)
PEAK_FP32, PEAK_BF16 = 95.0, 360.0  # GFLOP/s, matrix-multiply peaks measured on the 2-core project machine


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="osnet_ain_x1_0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8, help="timed rounds (best of N per variant)")
    ap.add_argument("--backends", default="eager,jit", help="comma list of: eager, jit, jit_mkldnn, inductor")
    ap.add_argument("--weights", default=None, help="torchreid weights (default: random init)")
    ap.add_argument("--checkpoint", default=None, help="an osnas retrain checkpoint instead of --model/--weights")
    ap.add_argument("--bn-recalibrate", action="store_true",
                    help="--rank1 with random weights: re-estimate BN statistics on training images first")
    ap.add_argument("--rank1", action="store_true", help="also compare bf16 vs fp32 retrieval rank-1")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    ap.add_argument("--rank1-domains", type=int, default=2, help="synthetic domains used by --rank1")
    ap.add_argument("--data-root", default=None, help="where the synthetic domains are generated/cached")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return ap.parse_args()


def build(args):
    from osnas.models import build_model, load_torchreid_weights

    if args.checkpoint:
        from osnas.models.checkpoint import load_model_from_checkpoint

        m, ck = load_model_from_checkpoint(args.checkpoint)
        args.model = f"{ck['arch']} {(ck['genotype'] or {}).get('name', '')} ({args.checkpoint})"
        return m
    torch.manual_seed(0)
    m = build_model(args.model, num_classes=0).eval()
    if args.weights:
        load_torchreid_weights(m, args.weights)
    return m


def speed(args, model, results):
    from osnas.models.deploy import optimize_for_inference

    x = torch.randn(args.batch, 3, args.height, args.width)
    with torch.inference_mode():
        ref = model(x)

    def plain(inp):
        with torch.inference_mode():
            return model(inp)

    variants = {"plain": plain}
    for be in args.backends.split(","):
        for bf in (False, True):
            t = time.time()
            variants[f"{be}-{'bf16' if bf else 'fp32'}"] = optimize_for_inference(
                model, bf16=bf, backend=be, example_size=(args.height, args.width))
            print(f"  built {be}-{'bf16' if bf else 'fp32'} in {time.time() - t:.1f}s", file=sys.stderr, flush=True)
    err = {}
    for k, f in variants.items():  # warm-up (and compilation for inductor), correctness
        t = time.time()
        y = f(x)
        f(x)
        err[k] = float((y - ref).norm() / ref.norm())
        print(f"  warm-up {k}: {time.time() - t:.1f}s, rel err {err[k]:.2e}", file=sys.stderr, flush=True)
    best = {k: float("inf") for k in variants}
    cpu = {k: float("inf") for k in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order:
            c, t = time.process_time(), time.perf_counter()
            variants[k](x)
            best[k] = min(best[k], time.perf_counter() - t)
            cpu[k] = min(cpu[k], time.process_time() - c)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {args.batch / best[k]:.1f}" for k in variants),
              file=sys.stderr, flush=True)
    base = best["plain"]
    print(f"\n{args.model} {args.height}x{args.width}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"best of {args.rounds} rounds (interleaved)")
    print(f"{'variant':<18} {'img/s':>7} {'x plain':>8} {'rel err':>9} {'GFLOP/s':>8} {'of peak':>8}"
          f" {'img/CPU-s':>10} {'x plain':>8}")
    rows = {}
    cores = min(max(torch.get_num_threads(), 1), 2)  # the peaks above are for the 2 cores together
    for k in variants:
        ips = args.batch / best[k]
        gf = ips * GFLOP_PER_IMAGE
        peak = (PEAK_BF16 if k.endswith("bf16") else PEAK_FP32) * cores / 2
        rows[k] = {"img_s": ips, "ratio": base / best[k], "rel_err": err[k], "gflops": gf, "frac_peak": gf / peak,
                   "img_per_cpu_s": args.batch / cpu[k], "cpu_ratio": cpu["plain"] / cpu[k]}
        print(f"{k:<18} {ips:7.1f} {base / best[k]:8.2f} {err[k]:9.2e} {gf:8.1f} {100 * gf / peak:7.0f}%"
              f" {args.batch / cpu[k]:10.1f} {cpu['plain'] / cpu[k]:8.2f}")
    print("img/CPU-s: images per second of process CPU time (all threads), best of the rounds: less sensitive to "
          "other processes taking the cores than wall time")
    print(f"compute limit ({cores} core{'s' if cores > 1 else ''}): fp32 {PEAK_FP32 * cores / 2 / GFLOP_PER_IMAGE:.0f} "
          f"img/s, bf16 {PEAK_BF16 * cores / 2 / GFLOP_PER_IMAGE:.0f} img/s ({GFLOP_PER_IMAGE} "
          f"GFLOP/image, 2-core peaks {PEAK_FP32:.0f} / {PEAK_BF16:.0f} GFLOP/s; '% of peak' against the fp32 or "
          f"bf16 peak of the cores used)")
    fp = max((v["ratio"] for k, v in rows.items() if k.endswith("fp32")), default=0)
    bf = max((v["ratio"] for k, v in rows.items() if k.endswith("bf16")), default=0)
    print(f"targets: fp32 optimised >= 1.3x plain: best {fp:.2f}x {'OK' if fp >= 1.3 else 'MISSED'}; "
          f"bf16 >= 2.5x plain: best {bf:.2f}x {'OK' if bf >= 2.5 else 'MISSED'}")
    results["speed"] = rows


# ----------------------------------------------------------------------------- rank-1 agreement
def retrieval_set(args):
    """(train, test, description): lists of (image tensor, pid, camid, domain)."""
    from osnas.models.deploy import load_image

    try:
        from osnas.data import build_dataset

        root = args.data_root or os.environ.get("OSNAS_DATA") or "data"
        train, test = [], []
        for k in range(args.rank1_domains):
            ds = build_dataset(f"synth{k}", root=root)
            train += [(load_image(Path(it[0]), args.height, args.width), it[1], it[2], k) for it in ds.train[:128]]
            test += [(load_image(Path(it[0]), args.height, args.width), it[1], it[2], k)
                     for it in ds.query + ds.gallery]
        return train, test, f"built-in synthetic domains synth0..synth{args.rank1_domains - 1} at {root}"
    except Exception as e:  # noqa: BLE001 - the data module may not be there yet
        print(f"  synthetic domains unavailable ({type(e).__name__}: {e}); using random images", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    n_ids, per_id = 150, 4
    protos = torch.randn(n_ids, 3, args.height // 8, args.width // 8, generator=g)
    imgs = []
    for pid in range(1, n_ids + 1):
        up = torch.nn.functional.interpolate(protos[pid - 1:pid], size=(args.height, args.width), mode="bilinear",
                                             align_corners=False)[0]
        for cam in range(per_id):
            imgs.append((up + 0.8 * torch.randn(up.shape, generator=g), pid, cam, 0))
    return imgs[:256], imgs, f"random images ({n_ids} ids x {per_id} cameras: smooth prototypes + noise)"


def embed(f, items, bs=32):
    out = []
    for i in range(0, len(items), bs):
        out.append(f(torch.stack([it[0] for it in items[i:i + bs]])).float())
    return torch.nn.functional.normalize(torch.cat(out), dim=1)


def rank1(args, model, results):
    """fp32 vs bf16 optimised paths: rank-1/mAP (cosine) and top-1 agreement, all-vs-all.

    Every identified test image (query + gallery) of a domain is a query against all of
    that domain's test images, same identity + same camera removed (itself included): 3-4x
    more queries than the query split alone, so one flipped query moves rank-1 by well
    under the 0.5-point target.
    """
    from osnas.metrics import evaluate_rank
    from osnas.models.deploy import optimize_for_inference

    train, test, what = retrieval_set(args)
    print(f"\nrank-1 agreement on {what}: {len(test)} test images")
    trained = bool(args.weights or args.checkpoint)
    if not trained and args.bn_recalibrate:  # forward-only BN re-estimation (cumulative average), no gradients
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            for i in range(0, len(train), 32):
                model(torch.stack([it[0] for it in train[i:i + 32]]))
        model.eval()
        print(f"  (random weights; BN statistics re-estimated on {len(train)} training images, forward only)")
    elif not trained:
        print("  (random weights, initial BN statistics)")
    pid = np.array([it[1] for it in test])
    cam = np.array([it[2] for it in test])
    dom = np.array([it[3] for it in test])
    with torch.inference_mode():  # how far fp32 rounding differences grow through this network
        xs = torch.stack([it[0] for it in test[:32]])
        ref = model(xs)
        cond = float((optimize_for_inference(model, backend="eager")(xs) - ref).norm() / ref.norm())
    print(f"  conditioning: fp32 optimised vs plain forward, rel err {cond:.1e} on these images")
    feats = {}
    for name, bf in (("fp32", False), ("bf16", True)):
        f = optimize_for_inference(model, bf16=bf, example_size=(args.height, args.width))
        t = time.time()
        feats[name] = embed(f, test)
        print(f"  embedded {len(test)} images with the {name} path in {time.time() - t:.0f}s", file=sys.stderr)
    out = {}
    for name, x in feats.items():
        ranks, aps, top1, nq = [], [], [], 0
        for k in np.unique(dom):
            idx = np.flatnonzero(dom == k)
            d = (1 - x[idx] @ x[idx].T).numpy()
            q = idx[pid[idx] > 0]  # identified images as queries (no distractors/junk)
            qi = np.searchsorted(idx, q)
            r = evaluate_rank(d[qi], pid[q], pid[idx], cam[q], cam[idx], max_rank=1)
            ranks.append(float(r["cmc"][0]) * len(q))
            aps.append(float(r["mAP"]) * len(q))
            nq += len(q)
            dd = d[qi].copy()  # top-1 gallery item after removing same id + same camera
            dd[(pid[q][:, None] == pid[idx][None, :]) & (cam[q][:, None] == cam[idx][None, :])] = np.inf
            top1.append(idx[dd.argmin(1)])
        out[name] = {"rank1": 100 * sum(ranks) / nq, "mAP": 100 * sum(aps) / nq, "queries": nq,
                     "top1": np.concatenate(top1)}
    agree = 100 * float((out["fp32"]["top1"] == out["bf16"]["top1"]).mean())
    for name in out:
        out[name].pop("top1")
        print(f"  {name}  all-vs-all rank-1 {out[name]['rank1']:6.2f}  mAP {out[name]['mAP']:6.2f}  "
              f"({out[name]['queries']} queries)")
    diff = abs(out["bf16"]["rank1"] - out["fp32"]["rank1"])
    print(f"  |rank-1 bf16 - fp32| = {diff:.2f} points ({'OK' if diff <= 0.5 else 'MISSED'}: target <= 0.5); "
          f"same top-1 gallery image for {agree:.1f}% of the queries; embedding rel err "
          f"{float((feats['bf16'] - feats['fp32']).norm() / feats['fp32'].norm()):.2e}")
    results["rank1"] = {**out, "set": what, "diff": diff, "top1_agreement": agree, "fp32_rel_err": cond}


def main():
    args = parse()
    torch.set_num_threads(args.threads)
    model = build(args)
    results = {"model": args.model, "batch": args.batch, "threads": args.threads, "torch": torch.__version__}
    if not args.no_speed:
        speed(args, model, results)
    if args.rank1:
        rank1(args, model, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
