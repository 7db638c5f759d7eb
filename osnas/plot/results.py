"""Result figures: cross-domain bars (mean ± std over files sharing labels), ranked-retrieval
grids from metrics.json examples, and retrain curves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from osnas.plot.common import WARMUP_COLOR, new_figure, series_colors, spans
from osnas.plot.readers import NON_LOSS_KEYS, Metrics, RetrainRun

MATCH, MISS, QUERY = "#2ca02c", "#d62728", "#1f77b4"


def note(msg: str) -> None:
    print(f"osnas plot: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- cross-domain bars
def aggregate(metrics: Sequence[Metrics]) -> dict:
    """{"models": [label], "targets": [t], "n": {label: files}, "rank1"/"mAP": {label: {t: (mean, std, n)}}}

    Values in percent; std is the sample std (ddof=1) over the files holding that label and target,
    0 for a single file.
    """
    models: List[str] = []
    targets: List[str] = []
    vals: Dict[str, Dict[str, Dict[str, List[float]]]] = {"rank1": {}, "mAP": {}}
    n: Dict[str, int] = {}
    for m in metrics:
        for t in m.data.get("targets", []):
            if t not in targets:
                targets.append(t)
        for label, e in m.models.items():
            if label not in models:
                models.append(label)
            n[label] = n.get(label, 0) + 1
            for t, r in e["targets"].items():
                if t not in targets:
                    targets.append(t)
                for k in ("rank1", "mAP"):
                    vals[k].setdefault(label, {}).setdefault(t, []).append(100.0 * float(r[k]))
    out = {"models": models, "targets": targets, "n": n}
    for k, per in vals.items():
        out[k] = {lab: {t: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                        for t, v in d.items()} for lab, d in per.items()}
    return out


def results(metrics: Sequence[Metrics]) -> Figure:
    ag = aggregate(metrics)
    models, targets = ag["models"], ag["targets"]
    M, T = len(models), len(targets)
    several = any(v > 1 for v in ag["n"].values())
    fig = new_figure(max(8.0, 2.0 + 2 * T * (0.35 * M + 0.5)), 4.8)
    axes = fig.subplots(1, 2)
    colors = series_colors(M)
    width = 0.8 / M
    rotate = M * T > 10
    for ax, key, name in zip(axes, ("rank1", "mAP"), ("rank-1", "mAP")):
        ax.set_gid(f"results:{key}")
        top = 0.0
        for i, (lab, col) in enumerate(zip(models, colors)):
            xs, ms, ss, ts = [], [], [], []
            for k, t in enumerate(targets):
                v = ag[key].get(lab, {}).get(t)
                if v is None:
                    continue
                xs.append(k - 0.4 + width * (i + 0.5))
                ms.append(v[0])
                ss.append(v[1])
                ts.append(t)
            if not xs:
                continue
            bc = ax.bar(xs, ms, width * 0.92, color=col, yerr=ss if several else None, capsize=3 if several else 0,
                        error_kw={"lw": 1, "ecolor": "black"})
            for rect, t in zip(bc.patches, ts):
                rect.set_gid(f"bar:{key}:{lab}:{t}")
            for x, mv, sv in zip(xs, ms, ss):
                txt = f"{mv:.1f}" + (f"±{sv:.1f}" if several and sv > 0 else "")
                ax.text(x, mv + sv + 0.8, txt, ha="center", va="bottom", fontsize=7,
                        rotation=90 if rotate or (several and sv > 0 and M > 2) else 0)
                top = max(top, mv + sv)
        ax.set_xticks(range(T))
        srcs = {str(x) for m in metrics for e in m.models.values() for x in (e.get("sources") or [])}
        ax.set_xticklabels([f"{t}\n(a training source!)" if t in srcs else t for t in targets])
        ax.set_xlim(-0.6, T - 0.4)
        ax.set_ylim(0, min(105.0, max(10.0, top * 1.25 + 4)))
        ax.set_xlabel("target domain")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    labels = [f"{lab} (n={ag['n'][lab]})" if ag["n"][lab] > 1 else lab for lab in models]
    fig.legend([Patch(color=c) for c in colors], labels, loc="outside lower center", ncol=min(M, 3), fontsize=8,
               frameon=False)
    settings = sorted({f"{m.data.get('metric', '?')}{', re-ranked' if m.data.get('rerank') else ''}" for m in metrics})
    sources = {tuple(e.get("sources") or []) for m in metrics for e in m.models.values()}
    src = f"; trained on {', '.join(next(iter(sources)))}" if len(sources) == 1 and next(iter(sources)) else ""
    err = f"; mean ± std over {max(ag['n'].values())} files" if several else ""
    fig.suptitle(f"Cross-domain re-ID ({' / '.join(settings)} distance{src}{err})", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- retrieval grid
def _resolve(p: str, bases: Sequence[Path]) -> Optional[Path]:
    q = Path(p)
    if q.is_file():
        return q
    if not q.is_absolute():
        for b in bases:
            if (b / q).is_file():
                return b / q
    return None


def _thumb(path: Path, size=(64, 128)):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail(size)
            return np.asarray(im)
    except (OSError, ValueError):
        return None


def _frame(ax, color: str, lw: float = 3.5):
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_edgecolor(color)
        s.set_linewidth(lw)
        s.set_visible(True)


def retrieval(metrics: Metrics, label: str, target: str, top: int = 10, max_queries: int = 8) -> Optional[Figure]:
    """Rows: query + its top-`top` gallery images, green frame = same identity, red = not.

    None (with a note) when the metrics hold no examples or none of the images can be read.
    """
    r = metrics.models[label]["targets"][target]
    ex = [e for e in (r.get("examples") or []) if isinstance(e, dict) and e.get("query")][:max_queries]
    if not ex:
        return None  # the caller notes files without examples
    bases = [metrics.path.parent, Path.cwd()]
    cells = []  # per row: [(image or None, kind, info)]
    found = missing = 0
    first_missing = None
    for e in ex:
        row = []
        qp = _resolve(str(e["query"]), bases)
        img = _thumb(qp) if qp else None
        row.append((img, "query", e))
        found, missing = found + (img is not None), missing + (img is None)
        first_missing = first_missing or (None if img is not None else e["query"])
        for g in (e.get("ranked") or [])[:top]:
            gp = _resolve(str(g.get("path", "")), bases)
            img = _thumb(gp) if gp else None
            row.append((img, "match" if g.get("match") else "miss", g))
            found, missing = found + (img is not None), missing + (img is None)
            first_missing = first_missing or (None if img is not None else g.get("path"))
        cells.append(row)
    if found == 0:
        note(f"retrieval grid for {label} on {target} skipped: image files not found (e.g. {first_missing})")
        return None
    if missing:
        note(f"retrieval grid for {label} on {target}: {missing} of {found + missing} images not found "
             f"(e.g. {first_missing}); drawn as grey boxes")
    ncol = top + 1
    fig = new_figure(1.0 + 0.78 * (ncol + 0.3), 1.2 + 1.72 * len(cells))
    gs = fig.add_gridspec(len(cells), ncol + 1, width_ratios=[1, 0.3] + [1] * top)
    for i, row in enumerate(cells):
        for j, (img, kind, info) in enumerate(row):
            ax = fig.add_subplot(gs[i, 0 if j == 0 else j + 1])
            if img is not None:
                ax.imshow(img, aspect="auto", interpolation="antialiased")
            else:
                ax.set_facecolor("0.8")
                ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            if kind == "query":
                _frame(ax, QUERY)
                ax.set_gid(f"query:{i}")
                ax.set_title("query", fontsize=8, color=QUERY, fontweight="bold")
                ax.set_xlabel(f"id {info.get('pid', '?')} cam {info.get('camid', '?')}", fontsize=6.5)
            else:
                _frame(ax, MATCH if kind == "match" else MISS)
                ax.set_gid(f"{kind}:{i}:{j}")
                ax.set_title(f"#{j}", fontsize=8)
                d = info.get("distance")
                ax.set_xlabel(f"id {info.get('pid', '?')}" + (f"\nd {d:.3f}" if isinstance(d, (int, float)) else ""),
                              fontsize=6.5, color=MATCH if kind == "match" else MISS)
    m = metrics.data
    fig.suptitle(f"Ranked retrieval on {target} — {label}\n"
                 f"query (blue) and its top-{top} gallery images by {m.get('metric', '?')} distance"
                 f"{', re-ranked' if m.get('rerank') else ''}; green frame = same identity (true match), "
                 f"red = different identity", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- retrain curves
def training(run: RetrainRun) -> Figure:
    rows = run.log
    ep = np.array([float(r["epoch"]) for r in rows])
    parts = [k for k in dict.fromkeys(k for r in rows for k in r)
             if k not in NON_LOSS_KEYS and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                               for r in rows)]
    fig = new_figure(11.0, 4.4)
    ax_l, ax_a = fig.subplots(1, 2)
    marker = "o" if len(rows) <= 30 else None
    fix = np.array([bool(r.get("fixbase")) for r in rows])
    colors = series_colors(max(len(parts), 1))
    for k, name in enumerate(parts):
        y = np.array([float(r[name]) if isinstance(r.get(name), (int, float)) else np.nan for r in rows])
        ax_l.plot(ep, y, color=colors[k], marker=marker, ms=4, lw=1.6, label=f"{name} loss", gid=f"loss:{name}")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss (mean over the epoch)")
    ax_l.set_title("loss parts", fontsize=10)
    acc = np.array([100.0 * float(r["acc"]) if isinstance(r.get("acc"), (int, float)) else np.nan for r in rows])
    ax_a.plot(ep, acc, color="#2ca02c", marker=marker, ms=4, lw=1.6, label="train accuracy", gid="acc")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("training ID accuracy (%)")
    ax_a.set_ylim(0, min(100.0, max(5.0, float(np.nanmax(acc)) * 1.15)) if np.isfinite(acc).any() else (0, 100))
    ax_a.set_title("identity-classification accuracy", fontsize=10)
    lr = np.array([float(r["lr"]) if isinstance(r.get("lr"), (int, float)) else np.nan for r in rows])
    handles = []
    for ax, tag in ((ax_l, "loss"), (ax_a, "acc")):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for a, b in spans(ep, fix):
            ax.axvspan(a, b, color=WARMUP_COLOR, alpha=0.6, lw=0, zorder=0)
        if np.isfinite(lr).any():
            tw = ax.twinx()
            tw.plot(ep, lr, color="0.3", ls="--", lw=1.0, gid=f"lr:{tag}")
            pos = lr[np.isfinite(lr) & (lr > 0)]
            if len(pos) and pos.max() / pos.min() > 20:
                tw.set_yscale("log")
            else:
                tw.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            tw.set_ylabel("learning rate", fontsize=8, color="0.3")
            tw.tick_params(labelsize=7, colors="0.3")
    h1, l1 = ax_l.get_legend_handles_labels()
    h2, l2 = ax_a.get_legend_handles_labels()
    handles = h1 + h2
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1, label="learning rate (right axes)"))
    if fix.any():
        handles.append(Patch(color=WARMUP_COLOR, label="classifier-only epochs (fixbase)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    g = run.genotype or {}
    m = run.meta
    name = g.get("name") or m.get("genotype") or run.path.name
    bits = [str(x) for x in (m.get("arch") or g.get("arch"),) if x]
    if m.get("sources"):
        bits.append("sources " + ", ".join(map(str, m["sources"])))
    if m.get("seed") is not None:
        bits.append(f"seed {m['seed']}")
    fig.suptitle(f"Retraining {name} — {run.label or run.path.name}" + (f" ({'; '.join(bits)})" if bits else ""),
                 fontsize=10)
    return fig

