"""Figures of `osnas analyze`, drawn from the analysis.json dict alone (osnas/analyze.py).

site_gap       heat-map: one column per normalisation site in network order, grouped by stage
               (stem | conv2 | conv3 | conv4 | conv5), rows domain share, identity share, probe
               accuracy over chance and score; suggested sites outlined (Rectangles with gid
               "suggested:SITE").
site_gap_bars  the score of every site as a bar (gid "score:SITE"), coloured by stage, the
               suggested ones outlined and labelled IN, the min_score threshold dashed, and the
               sites that no position of the search space can hold hatched.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from osnas.plot.common import CHOSEN_COLOR, new_figure, series_colors

ROWS = (("domain_share", "domain share"),
        ("identity_share", "identity share\n(within domain)"),
        ("probe_over_chance", "probe accuracy\nover chance"),
        ("score", "score\n(domain − identity)"))
CMAP = "BrBG"  # diverging, no red: the suggestion's outline (CHOSEN_COLOR) stays visible on every cell
NOT_HELD = "†"  # marks a site that no position of the space can hold (measured, never suggested)


def in_network_order(analysis: dict) -> dict:
    """The analysis with its sites in network order (stem first, conv5 last), whatever order the
    dict arrives in (a JSON file written with sorted keys holds them alphabetically)."""
    from osnas.models.osnet import norm_sites

    order = {s: i for i, s in enumerate(norm_sites())}
    sites = dict(sorted(analysis["sites"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return {**analysis, "sites": sites}


def stage_groups(analysis: dict) -> List[Tuple[str, int, int]]:
    """(stage, first column, last column) of the sites, which come in network order (the figures
    below put them so, `in_network_order`, before they draw anything)."""
    groups: List[Tuple[str, int, int]] = []
    for j, r in enumerate(analysis["sites"].values()):
        if groups and groups[-1][0] == r["stage"]:
            groups[-1] = (r["stage"], groups[-1][1], j)
        else:
            groups.append((r["stage"], j, j))
    return groups


def _site_labels(analysis: dict) -> List[str]:
    return [s + ("" if r["holdable"] else f" {NOT_HELD}") for s, r in analysis["sites"].items()]


def _where(analysis: dict) -> str:
    sites = analysis["suggestion"]["in_sites"]
    return ", ".join(sites) if sites else "nowhere (plain OSNet)"


def _title(what: str, analysis: dict) -> str:
    return f"{what} — sources {', '.join(map(str, analysis['sources']))}"


def _stages(ax, analysis: dict, line_kw: dict) -> None:
    """Stage separators (vertical lines) and stage names along the top edge."""
    groups = stage_groups(analysis)
    for _, _, last in groups[:-1]:
        ax.axvline(last + 0.5, **line_kw)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(a + b) / 2 for _, a, b in groups], labels=[g for g, _, _ in groups], fontsize=9,
                   fontweight="bold")
    top.tick_params(length=0)


def _mark_ticks(ax, analysis: dict) -> None:
    """Suggested sites' labels bold red, unholdable ones grey."""
    for lab, r in zip(ax.get_xticklabels(), analysis["sites"].values()):
        if r["suggested"]:
            lab.set_color(CHOSEN_COLOR)
            lab.set_fontweight("bold")
        elif not r["holdable"]:
            lab.set_color("0.45")


def site_gap(analysis: dict) -> Figure:
    """Heat-map sites x {domain share, identity share, probe over chance, score}, in [-1, 1]."""
    analysis = in_network_order(analysis)
    sites = analysis["sites"]
    names = list(sites)
    mat = np.array([[sites[s][k] for s in names] for k, _ in ROWS])  # (4, S)
    fig = new_figure(2.6 + 0.62 * len(names), 4.6)
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap=CMAP, vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat[i, j]
            ax.text(j, i, f"{v:+.2f}" if ROWS[i][0] in ("score", "probe_over_chance") else f"{v:.2f}",
                    ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 else "black")
    for j, s in enumerate(names):
        if sites[s]["suggested"]:
            ax.add_patch(Rectangle((j - 0.5, -0.5), 1, mat.shape[0], fill=False, edgecolor=CHOSEN_COLOR, lw=2.5,
                                   zorder=3, gid=f"suggested:{s}"))
    ax.set_xticks(range(len(names)), labels=_site_labels(analysis), rotation=55, ha="right", fontsize=8)
    ax.set_yticks(range(len(ROWS)), labels=[lab for _, lab in ROWS], fontsize=8)
    ax.tick_params(length=0)
    _mark_ticks(ax, analysis)
    _stages(ax, analysis, {"color": "black", "lw": 1.5})
    for sp in ax.spines.values():
        sp.set_visible(False)
    fig.colorbar(im, ax=ax, shrink=0.9, label="share / accuracy gain / score")
    note = f"{NOT_HELD} no position of the space can hold IN here (measured, never suggested)"
    fig.legend(handles=[Patch(facecolor="none", edgecolor=CHOSEN_COLOR, lw=2.5,
                              label=f"suggested IN: {_where(analysis)}"),
                        Patch(facecolor="none", edgecolor="none", label=note)],
               loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    fig.suptitle(_title("Domain gap in the channel statistics at each normalisation site", analysis), fontsize=11)
    return fig


def site_gap_bars(analysis: dict) -> Figure:
    """Bars of the score per site (network order), the suggestion highlighted, the threshold dashed."""
    analysis = in_network_order(analysis)
    sites = analysis["sites"]
    names = list(sites)
    scores = np.array([sites[s]["score"] for s in names])
    stages = [g for g, _, _ in stage_groups(analysis)]
    palette = [c for k, c in enumerate(series_colors(10)) if k != 3]  # tab10 without its red (CHOSEN_COLOR)
    colors = {g: palette[k % len(palette)] for k, g in enumerate(stages)}
    fig = new_figure(2.2 + 0.55 * len(names), 4.8)
    ax = fig.add_subplot()
    for j, s in enumerate(names):
        r = sites[s]
        ax.bar(j, r["score"], width=0.7, color=colors[r["stage"]], alpha=1.0 if r["holdable"] else 0.45,
               hatch=None if r["holdable"] else "//", edgecolor=CHOSEN_COLOR if r["suggested"] else "none",
               lw=2.5 if r["suggested"] else 0, gid=f"score:{s}")
        up = r["score"] >= 0
        ax.text(j, r["score"] + (0.01 if up else -0.01), ("IN " if r["suggested"] else "") + f"#{r['rank']}",
                ha="center", va="bottom" if up else "top", fontsize=7,
                color=CHOSEN_COLOR if r["suggested"] else "0.2", fontweight="bold" if r["suggested"] else "normal")
    min_score = float(analysis["rule"]["min_score"])
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhline(min_score, color="0.3", lw=1.0, ls="--")
    lo, hi = min(float(scores.min()), min_score, 0.0), max(float(scores.max()), min_score, 0.0)
    pad = max(0.08, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticks(range(len(names)), labels=_site_labels(analysis), rotation=55, ha="right", fontsize=8)
    _mark_ticks(ax, analysis)
    _stages(ax, analysis, {"color": "0.6", "lw": 0.8, "ls": ":"})
    ax.set_ylabel("score = domain share − identity share")
    ax.grid(axis="y", alpha=0.3)
    for sp in ("top", "right"):
        ax.spines[sp].set_visible(False)
    handles = [Patch(color=colors[g], label=g) for g in stages]
    handles += [Patch(facecolor="white", edgecolor=CHOSEN_COLOR, lw=2.5, label=f"suggested IN: {_where(analysis)}"),
                Patch(facecolor="0.8", hatch="//", label=f"{NOT_HELD} not in the space (never suggested)"),
                Line2D([], [], color="0.3", ls="--", label=f"min_score {min_score:g}")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False, fontsize=8)
    rule = analysis["rule"]
    fig.suptitle(_title("Net case for instance normalisation per site", analysis)
                 + f"\nat most {rule['max_sites']} site(s) with score > {min_score:g}; #k = rank", fontsize=10)
    return fig
