"""Figures of a comparison folder: architectures retrained on one test-bed, searched ones marked.

A comparison folder holds `results.json` (written by experiments/synthetic/run_protocol.py):

    yardstick  {name: {mAP, rank1, [mAP_seeds], [latency_ms], [relative_latency]}}  architectures
               retrained once (mAP) or with several seeds (mAP_seeds, seed 1 first): random
               draws from the space (names random*) and the published ones (osnet, osnet_ibn,
               osnet_ain)
    methods    {method: {per_seed: [{seed, mAP, [mAP_seeds], [latency_ms]}], mean_position_agreement}}
    budgets    (optional) {method@budget: {per_seed: [{seed, mAP, latency_ms}]}}: cost-aware searches
    noise      {mAP_std}                             the noise floor (std over retrain seeds)

distribution  held-out mAP of every yardstick architecture, sorted; the searched genotypes of
              every method as one marker per seed; OSNet-AIN +- 2 noise std shaded; where
              architectures were retrained with several seeds, their mean (black tick, or a
              hollow marker) and range (whisker) over those seeds;
agreement     per method, the mean per-position agreement of its genotypes over seeds;
pareto        (when latencies are recorded) held-out mAP against measured latency: random
              architectures, the published ones, the searched genotypes, and the front.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from matplotlib.figure import Figure

from osnas.plot.common import new_figure

NAMED = ("osnet", "osnet_ibn", "osnet_ain")
NAMED_COLOR = "#c44e52"
RANDOM_COLOR = "#8c8c8c"
MARKERS = {"argmax": "o", "perturb": "s", "consensus": "*", "anneal": "^", "unseen": "D"}


# no grey (C7: the random architectures); as many colours as the protocol has methods (13) and a few more
PALETTE = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
           "#66a61e", "#a6761d", "#e6ab02"]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _marker(method: str, i: int) -> str:
    return MARKERS.get(method.split("@")[0], "ovs^DPX"[i % 7])


def distribution(data: dict, title: str = "") -> Figure:
    yard, methods = data["yardstick"], data.get("methods", {})
    order = sorted(yard, key=lambda k: yard[k]["mAP"])
    fig = new_figure(max(8.0, 0.28 * (len(order) + len(methods)) + 3), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(order)), [100 * yard[k]["mAP"] for k in order],
           color=[NAMED_COLOR if k in NAMED else RANDOM_COLOR for k in order])
    x0 = len(order) + 1  # one column per method right of the sorted yardstick: a marker per seed
    several = [i for i, k in enumerate(order) if len(yard[k].get("mAP_seeds") or []) > 1]
    if several:  # the mean over the retrain seeds as a tick, their range as a whisker
        seeds = [100 * np.asarray(yard[order[i]]["mAP_seeds"]) for i in several]
        mean = np.array([v.mean() for v in seeds])
        ax.errorbar(several, mean, yerr=[mean - [v.min() for v in seeds], [v.max() for v in seeds] - mean],
                    fmt="_", color="k", ms=10, lw=0.8, capsize=0, label="mean and range over retrain seeds")
    for i, (m, r) in enumerate(methods.items()):
        ys = [100 * row["mAP"] for row in r["per_seed"]]
        ax.plot([x0 + i] * len(ys), ys, ls="none", marker=_marker(m, i), color=_color(i), ms=8, alpha=0.8)
        means = [100 * float(np.mean(row["mAP_seeds"])) for row in r["per_seed"] if row.get("mAP_seeds")]
        if means:  # hollow: the same genotypes' means over the retrain seeds
            ax.plot([x0 + i + 0.35] * len(means), means, ls="none", marker=_marker(m, i), mfc="none",
                    color=_color(i), ms=8)
    ax.set_xticks(list(range(len(order))) + [x0 + i for i in range(len(methods))],
                  [k if not k.startswith("random") else "" for k in order] + list(methods), rotation=60, fontsize=7)
    noise = float(data.get("noise", {}).get("mAP_std", 0.0))
    if "osnet_ain" in yard and noise > 0:
        m = 100 * yard["osnet_ain"]["mAP"]
        ax.axhspan(m - 200 * noise, m + 200 * noise, color=NAMED_COLOR, alpha=0.12, zorder=0,
                   label="OSNet-AIN ± 2 noise std")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("held-out mAP (%)")
    ax.set_title(title or "random architectures (grey, sorted), published (red), searched (a marker per seed)",
                 fontsize=9)
    return fig


def agreement(data: dict, title: str = "") -> Figure:
    methods = data.get("methods", {})
    fig = new_figure(max(4.5, 0.9 * len(methods) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    names = list(methods)
    ax.bar(names, [100 * methods[m]["mean_position_agreement"] for m in names],
           color=[_color(i) for i in range(len(names))])
    ax.axhline(90, color="k", ls="--", lw=0.8, label="target 90%")
    ax.set_ylim(0, 105)
    ax.set_ylabel("per-position agreement over seeds (%)")
    ax.set_title(title or "seed agreement per method", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=7)
    return fig


def has_latency(data: dict) -> bool:
    return any("latency_ms" in v for v in data.get("yardstick", {}).values())


def pareto_front(points: List[Tuple[float, float]]) -> List[int]:
    """Indices of the points (latency, mAP) no other point beats on both (lower latency, higher
    mAP), ordered by latency."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def latency_key(data: dict) -> str:
    """`relative_latency` (to the all-BN network, timed in the same rounds: drift cancels) where
    every timed architecture has it, else `latency_ms`."""
    rows = [v for v in data.get("yardstick", {}).values() if "latency_ms" in v]
    rows += [row for r in {**data.get("methods", {}), **data.get("budgets", {})}.values()
             for row in r["per_seed"] if "latency_ms" in row]
    return "relative_latency" if rows and all("relative_latency" in v for v in rows) else "latency_ms"


def pareto(data: dict, title: str = "") -> Figure:
    yard, methods = data["yardstick"], data.get("methods", {})
    key = latency_key(data)
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    pts, labels = [], []
    for k, v in yard.items():
        if key in v:
            pts.append((v[key], 100 * v["mAP"]))
            labels.append(k)
    rnd = [p for p, k in zip(pts, labels) if k not in NAMED]
    if rnd:
        ax.scatter(*zip(*rnd), color=RANDOM_COLOR, s=18, label="random architectures")
    for k in NAMED:
        if k in yard and key in yard[k]:
            ax.scatter([yard[k][key]], [100 * yard[k]["mAP"]], color=NAMED_COLOR, marker="P", s=70)
            ax.annotate(k, (yard[k][key], 100 * yard[k]["mAP"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    budgets = data.get("budgets", {})  # cost-aware searches: method@budget -> per_seed
    for i, (m, r) in enumerate({**methods, **budgets}.items()):
        rows = [row for row in r["per_seed"] if key in row]
        if rows:
            ax.scatter([row[key] for row in rows], [100 * row["mAP"] for row in rows], marker=_marker(m, i),
                       color=_color(i), s=45, alpha=0.85, label=m)
            pts += [(row[key], 100 * row["mAP"]) for row in rows]
    if pts:
        front = [pts[i] for i in pareto_front(pts)]
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=0.9, alpha=0.6,
                label="Pareto front")
    noise = float(data.get("noise", {}).get("mAP_std", 0.0))
    if "osnet_ain" in yard and noise > 0:
        m = 100 * yard["osnet_ain"]["mAP"]
        ax.axhspan(m - 200 * noise, m + 200 * noise, color=NAMED_COLOR, alpha=0.1, label="OSNet-AIN ± 2 noise std")
    unit = data.get("latency", {})
    how = (f"{unit['backend']}, batch {unit.get('batch', '?')}, {unit.get('height', '?')}x{unit.get('width', '?')}"
           if unit.get("backend") else "")
    ax.set_xlabel(f"measured latency relative to the all-BN network ({how})" if key == "relative_latency"
                  else f"measured latency (ms{', ' + how if how else ''})")
    ax.set_ylabel("held-out mAP (%)")
    ax.set_title(title or "held-out mAP against deployment latency", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig
