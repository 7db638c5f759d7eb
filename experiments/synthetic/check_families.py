"""Quick separability check of a synthetic domain family (no network training).

For every domain of a family it reports rank-1 / mAP (Market-1501 protocol: same id in the
same camera is not a match, distractors stay in the gallery) of three simple matchers, each
on two features of a 32x16 down-sampled image:

  raw  -- the pixel values,
  norm -- per-image, per-channel standardised pixels (mean 0, std 1 per channel: what
          instance normalisation does to the input),

  nn     -- nearest neighbour, no training,
  within -- PCA + LDA trained on the domain's own training split (the in-domain oracle),
  cross  -- PCA + LDA trained on the training splits of all OTHER domains of the family
            (leave-one-domain-out: the domain-generalisation question).

On a style family (synth, hard) `norm` should beat `raw` in the cross column (the gap is colour);
on the geometry family it should not (the gap is blur / resolution / pose / occlusion, and the
absolute colour that carries identity is partly normalised away).

    OMP_NUM_THREADS=1 python experiments/synthetic/check_families.py --family geom --preset small
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from osnas.data import build_dataset
from osnas.data.synth import PRESETS, family_default_count, params_from_env, run_synth

FEAT_HW = (32, 16)


def load(items) -> np.ndarray:
    h, w = FEAT_HW
    out = np.empty((len(items), h * w * 3), np.float32)
    for i, it in enumerate(items):
        with Image.open(it[0]) as im:
            out[i] = np.asarray(im.convert("RGB").resize((w, h), Image.BOX), np.float32).reshape(-1) / 255.0
    return out


def channel_norm(x: np.ndarray) -> np.ndarray:
    c = x.reshape(len(x), -1, 3)
    c = (c - c.mean(1, keepdims=True)) / (c.std(1, keepdims=True) + 1e-3)
    return c.reshape(len(x), -1)


def lda(x: np.ndarray, y: np.ndarray, pca_dim: int = 128, out_dim: int = 64, reg: float = 1e-2):
    """PCA then LDA (Sw-whitened between-class scatter); returns (mean, projection)."""
    mu = x.mean(0)
    xc = x - mu
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    P = vt[: min(pca_dim, len(s))].T
    z = xc @ P
    classes = np.unique(y)
    means = np.stack([z[y == c].mean(0) for c in classes])
    zw = z - means[np.searchsorted(classes, y)]
    sw = zw.T @ zw / len(z)
    sw += reg * np.trace(sw) / len(sw) * np.eye(len(sw))
    e, v = np.linalg.eigh(sw)
    wh = v / np.sqrt(e)
    mb = (means - means.mean(0)) @ wh
    _, _, vt2 = np.linalg.svd(mb, full_matrices=False)
    return mu, P @ wh @ vt2[: min(out_dim, len(classes) - 1)].T


def evaluate(qf, gf, q, g) -> tuple[float, float]:
    """Rank-1 and mAP of cosine distance, Market protocol."""
    qf = qf / (np.linalg.norm(qf, axis=1, keepdims=True) + 1e-8)
    gf = gf / (np.linalg.norm(gf, axis=1, keepdims=True) + 1e-8)
    d = -qf @ gf.T
    gp = np.array([it[1] for it in g])
    gc = np.array([it[2] for it in g])
    r1, aps = [], []
    for i, (_, pid, cam, _) in enumerate(q):
        keep = ~((gp == pid) & (gc == cam))
        order = np.argsort(d[i][keep], kind="stable")
        match = (gp[keep][order] == pid)
        if not match.any():
            continue
        r1.append(float(match[0]))
        hits = np.cumsum(match)
        aps.append(float((hits[match] / (np.flatnonzero(match) + 1)).mean()))
    return 100 * np.mean(r1), 100 * np.mean(aps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="geom", help="synth | hard | geom")
    ap.add_argument("--domains", type=int, default=0, help="how many domains (default: the family's built-in ones)")
    ap.add_argument("--preset", default="small", choices=list(PRESETS), help="sizes (the family's preset)")
    ap.add_argument("--root", default="/tmp/osnas_check_families", help="data root (generated once, cached)")
    args = ap.parse_args()
    os.environ["OSNAS_SYNTH_PRESET"] = args.preset
    n = args.domains or family_default_count(args.family)
    names = [f"{args.family}{k}" for k in range(n)]
    params = params_from_env(args.family)
    t0 = time.time()
    run_synth(Path(args.root) / "synth", names, params=params)
    print(f"generated/checked {n} domains in {time.time() - t0:.1f}s (sizes: {params})")
    data = {}
    for nm in names:
        ds = build_dataset(nm, args.root)
        tr = load(ds.train)
        data[nm] = dict(ds=ds, train=tr, ytr=np.array([it[1] for it in ds.train]), q=load(ds.query),
                        g=load(ds.gallery))
    feats = {"raw": lambda x: x, "norm": channel_norm}
    print(f"\n{args.family}: rank-1 / mAP (%), features {FEAT_HW[0]}x{FEAT_HW[1]}x3")
    heads = ("nn", "within (LDA)", "cross (LDA, LODO)")
    print(f"{'domain':<8} {'test ids':>8} | " + " | ".join(f"{m:^19}" for m in heads))
    print(f"{'':<8} {'':>8} | " + " | ".join(f"{'raw':^9} {'norm':^9}" for _ in range(3)))
    tot = np.zeros((3, 2, 2))
    for nm in names:
        D = data[nm]
        ds = D["ds"]
        row = []
        for j, (fname, f) in enumerate(feats.items()):
            q, g = f(D["q"]), f(D["g"])
            row.append((0, j, evaluate(q, g, ds.query, ds.gallery)))
            mu, P = lda(f(D["train"]), D["ytr"])
            row.append((1, j, evaluate((q - mu) @ P, (g - mu) @ P, ds.query, ds.gallery)))
            others = [o for o in names if o != nm]
            xs = np.concatenate([f(data[o]["train"]) for o in others])
            ys = np.concatenate([data[o]["ytr"] + 100000 * i for i, o in enumerate(others)])
            mu, P = lda(xs, ys)
            row.append((2, j, evaluate((q - mu) @ P, (g - mu) @ P, ds.query, ds.gallery)))
        cells = {(m, j): v for m, j, v in row}
        for (m, j), v in cells.items():
            tot[m, j] += v
        print(f"{nm:<8} {len({it[1] for it in ds.query}):>8} | " + " | ".join(
            f"{cells[m, 0][0]:4.1f}/{cells[m, 0][1]:4.1f} {cells[m, 1][0]:4.1f}/{cells[m, 1][1]:4.1f}"
            for m in range(3)))
    tot /= len(names)
    print(f"{'mean':<8} {'':>8} | " + " | ".join(
        f"{tot[m, 0, 0]:4.1f}/{tot[m, 0, 1]:4.1f} {tot[m, 1, 0]:4.1f}/{tot[m, 1, 1]:4.1f}" for m in range(3)))
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
