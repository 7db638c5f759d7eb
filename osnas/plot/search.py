"""Search figures: final alpha heat-map, alpha trajectories, entropy, agreement of several runs,
and the retrieval scores of `derive --select retrieval`.

Artists carry gids (unique ids in SVG) that tests and SVG readers can find: cells chosen by
argmax are Rectangles "chosen:[RUN:]POSITION"; cells chosen by retrieval "retrieval:POSITION"; trajectory panels are Axes "position:NAME";
agreement bars "agreement:POSITION"; warm-up bands "warmup:...".
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from osnas.plot.common import (CHOSEN_COLOR, WARMUP_COLOR, candidate_colors, grid_shape, new_figure,
                                series_colors, shade_warmup)
from osnas.plot.readers import SearchRun


def _uniform(space) -> bool:
    names = [p.names for p in space.positions]
    return all(n == names[0] for n in names)


def _decimals(mat: np.ndarray) -> int:
    """Enough decimals (2 to 4) to tell the top two candidates of every row apart (early or flat runs)."""
    gap = 1.0
    for row in mat:
        v = np.sort(row[~np.isnan(row)])[::-1]
        if len(v) > 1:
            gap = min(gap, float(v[0] - v[1]))
    return 4 if gap <= 1e-4 else int(min(4, max(2, math.ceil(-math.log10(gap)))))


def _subtitle(run: SearchRun) -> str:
    m = run.meta
    bits = [f"space {run.space.name}", f"{run.relaxation}"]
    if m.get("objective"):
        bits.append(str(m["objective"]))
    if m.get("sources"):
        bits.append("sources " + ", ".join(map(str, m["sources"])))
    bits.append(f"{int(run.history.steps[-1]) + 1} steps")
    return " · ".join(bits)


# ----------------------------------------------------------------------------- heat-map
def _grid(pos, values: Dict[str, Dict[str, float]]) -> np.ndarray:
    """(positions, most candidates) matrix of values[position][candidate]; NaN where a position
    has fewer candidates."""
    mat = np.full((len(pos), max(len(p.names) for p in pos)), np.nan)
    for i, p in enumerate(pos):
        mat[i, :len(p.names)] = [values[p.name][c] for c in p.names]
    return mat


def _outline(ax, i: int, j: int, gid: str) -> None:
    """Outline heat-map cell (row i, column j): a chosen candidate."""
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=CHOSEN_COLOR, lw=2.5, gid=gid, zorder=3))


def draw_heatmap(ax, run: SearchRun, fontsize: float = 9, row_labels: bool = True, tag: str = "",
                 outline: bool = True):
    """Positions (rows, space order) x candidates; annotated; argmax outlined (unless not
    `outline`: alphas that never moved have no argmax to show). Returns the image."""
    pos = run.positions
    uniform = _uniform(run.space)
    ncol = max(len(p.names) for p in pos)
    mat = _grid(pos, run.final)
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest")
    ax.set_facecolor("0.92")  # cells a position does not have
    dec = _decimals(mat)
    for i, p in enumerate(pos):
        for j, c in enumerate(p.names):
            v = mat[i, j]
            txt = f"{v:.{dec}f}" if uniform else f"{c}\n{v:.{dec}f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=fontsize,
                    color="white" if v > 0.6 else "black",
                    fontweight="bold" if outline and c == run.choices[p.name] else "normal")
        if outline:
            _outline(ax, i, p.names.index(run.choices[p.name]), f"chosen:{tag}{p.name}")
    ax.set_xticks(range(ncol))
    ax.set_xticklabels(pos[0].names if uniform else [f"candidate {j}" for j in range(ncol)],
                       fontsize=fontsize)
    ax.set_yticks(range(len(pos)))
    ax.set_yticklabels([p.name for p in pos], fontsize=fontsize)
    ax.tick_params(axis="y", labelleft=row_labels)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, ncol, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(pos), 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return im


def alpha_heatmap(run: SearchRun) -> Figure:
    pos = run.positions
    ncol = max(len(p.names) for p in pos)
    fig = new_figure(2.4 + 1.15 * ncol + 1.0, 1.9 + 0.42 * len(pos))
    ax = fig.add_subplot()
    moved = run.alphas_moved
    im = draw_heatmap(ax, run, outline=moved)
    ax.set_xlabel("candidate" if _uniform(run.space) else "candidate (name in the cell)")
    ax.set_ylabel("position (search-space order)")
    fig.colorbar(im, ax=ax, label="probability", shrink=0.9)
    if moved:
        fig.legend(handles=[Patch(facecolor="none", edgecolor=CHOSEN_COLOR, lw=2.5, label="chosen (argmax)")],
                   loc="outside lower center", frameon=False, fontsize=8)

    fig.suptitle(f"Final architecture probabilities — {run.label or run.path.name}", fontsize=11)
    note = "" if moved else ("\nthe alphas never moved (no alpha step): nothing to choose from them; the answer is "
                             "derive's retrieval scores (retrieval_scores)")
    ax.set_title(_subtitle(run) + note, fontsize=7.5, color="0.3", wrap=True)
    return fig


def retrieval_scores(run: SearchRun) -> Figure:
    """Held-out retrieval mAP of every one-hot subnet that derive scored at its final point
    (positions x candidates; the others fixed at the chosen genotype), coloured by the distance
    below the row's best in standard errors; the chosen candidate outlined. A candidate within
    2 standard errors of the best is noise, so the simplest of those is chosen."""
    r = run.retrieval
    pos = run.positions
    uniform = _uniform(run.space)
    ncol = max(len(p.names) for p in pos)
    gap = np.minimum(_grid(pos, r.gap_se), 6.0)  # (P, C) in standard errors, inf shown as 6
    fig = new_figure(2.4 + 1.2 * ncol + 1.0, 2.1 + 0.45 * len(pos))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(gap), cmap="Greens_r", vmin=0.0, vmax=6.0, aspect="auto",
                   interpolation="nearest")
    ax.set_facecolor("0.92")
    for i, p in enumerate(pos):
        for j, c in enumerate(p.names):
            g = r.gap_se[p.name][c]
            txt = f"{100 * r.scores[p.name][c]:.1f}\n" + ("best" if g == 0 else f"-{g:.1f} SE" if np.isfinite(g) else "-\u221e SE")
            ax.text(j, i, (txt if uniform else f"{c}\n{txt}"), ha="center", va="center", fontsize=8,
                    color="white" if gap[i, j] < 2.0 else "black",
                    fontweight="bold" if c == r.choices[p.name] else "normal")
        _outline(ax, i, p.names.index(r.choices[p.name]), f"retrieval:{p.name}")
    ax.set_xticks(range(ncol))
    ax.set_xticklabels(pos[0].names if uniform else [f"candidate {j}" for j in range(ncol)], fontsize=9)
    ax.set_yticks(range(len(pos)))
    ax.set_yticklabels([p.name for p in pos], fontsize=9)
    ax.tick_params(length=0)
    ax.set_ylabel("position (search-space order)")
    fig.colorbar(im, ax=ax, label="below the best (standard errors)", shrink=0.9)
    fig.legend(handles=[Patch(facecolor="none", edgecolor=CHOSEN_COLOR, lw=2.5,
                              label="chosen: the fewest IN sites within 2 SE of the best")],
               loc="outside lower center", frameon=False, fontsize=8)
    fig.suptitle(f"Held-out retrieval mAP (%) of each one-hot subnet — {run.label or run.path.name}", fontsize=11)
    ax.set_title(_subtitle(run) + " · BN re-estimated per subnet, the others at the chosen genotype",
                 fontsize=7.5, color="0.3", wrap=True)
    return fig


# ----------------------------------------------------------------------------- trajectories
def _panel_grid(fig: Figure, n: int):
    """n panels in a grid sharing x and y; empty grid cells removed; x labels on each column's last."""
    nrows, ncols = grid_shape(n)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    axes = list(axes[:n])
    for k, ax in enumerate(axes):
        last_in_col = k + ncols >= n
        ax.xaxis.set_tick_params(labelbottom=last_in_col)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if last_in_col:
            ax.set_xlabel("step")
        if k % ncols == 0:
            ax.set_ylabel("probability")
    return axes, ncols


def _tau_twin(ax, steps, tau, right_label: bool, top: float):
    tw = ax.twinx()
    tw.plot(steps, tau, color="black", ls="--", lw=1.0, alpha=0.6)
    tw.set_ylim(0, top)
    tw.tick_params(labelsize=7, labelright=right_label, right=right_label)
    if right_label:
        tw.set_ylabel("Gumbel τ", fontsize=8)
    return tw


def alpha_trajectories(run: SearchRun) -> Figure:
    h, pos = run.history, run.positions
    names = [c for p in pos for c in p.names]
    colors = candidate_colors(names)
    nrows, ncols = grid_shape(len(pos))
    gumbel = run.relaxation == "gumbel"
    tau_varies = gumbel and float(np.ptp(h.tau)) > 0
    fig = new_figure(3.1 * ncols + (0.5 if tau_varies else 0), 2.1 * nrows + 1.3)
    axes, ncols = _panel_grid(fig, len(pos))
    marker = "o" if len(h.steps) <= 30 else None
    warm_any = False
    for k, (ax, p) in enumerate(zip(axes, pos)):
        ax.set_gid(f"position:{p.name}")
        warm_any = shade_warmup(ax, h.steps, h.warm, tag=p.name) or warm_any
        ax.axhline(1.0 / len(p.names), color="0.6", ls=":", lw=0.8)
        ch = run.choices[p.name]
        for j, c in enumerate(p.names):
            ax.plot(h.steps, h.probs[p.name][:, j], color=colors[c], lw=2.2 if c == ch else 1.2,
                    marker=marker, ms=3)
        ax.set_title(f"{p.name} → {ch} ({run.final[p.name][ch]:.2f})", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if tau_varies:
            last_col = (k % ncols == ncols - 1) or k == len(pos) - 1
            _tau_twin(ax, h.steps, h.tau, last_col, float(h.tau.max()) * 1.05)
    handles = [Line2D([], [], color=colors[c], lw=2, label=c) for c in colors]
    handles.append(Line2D([], [], color="0.6", ls=":", lw=1, label="uniform 1/n"))
    if warm_any:
        handles.append(Patch(color=WARMUP_COLOR, label="warm-up (alphas frozen)"))
    if tau_varies:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="Gumbel τ (right axis)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    note = ""
    if gumbel and not tau_varies:
        note = f" (Gumbel τ = {h.tau[0]:g} throughout)"
    fig.suptitle(f"Candidate probabilities during the search — {run.label or run.path.name}{note}\n"
                 f"{_subtitle(run)}", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- entropy
def entropy(run: SearchRun) -> Figure:
    h, pos = run.history, run.positions
    fig = new_figure(9.5, 4.8)
    ax = fig.add_subplot()
    warm = shade_warmup(ax, h.steps, h.warm, tag="entropy")
    colors = series_colors(len(pos))
    styles = ["-", "--", "-.", ":"] if len(pos) > 10 else ["-"]
    marker = "o" if len(h.steps) <= 30 else None
    for k, p in enumerate(pos):
        ax.plot(h.steps, h.entropy[p.name], color=colors[k], lw=1.4, ls=styles[(k // 10) % len(styles)],
                marker=marker, ms=3, label=p.name, gid=f"entropy:{p.name}")
    ns = sorted({len(p.names) for p in pos})
    for n in ns:
        ax.axhline(math.log(n), color="black", ls="--", lw=1, gid=f"max-entropy:{n}",
                   label=f"max log {n} = {math.log(n):.3f}" + (f" (n={n})" if len(ns) > 1 else ""))
    ax.set_ylim(0, math.log(max(ns)) * 1.08)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("entropy (nats)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if warm:
        handles.append(Patch(color=WARMUP_COLOR, label="warm-up"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
              title="position", title_fontsize=8, ncol=2 if len(handles) > 14 else 1)
    fig.suptitle(f"Entropy of each position's candidate distribution — {run.label or run.path.name}", fontsize=11)
    ax.set_title(_subtitle(run), fontsize=8, color="0.3")
    return fig


# ----------------------------------------------------------------------------- several runs
def agreement(runs: Sequence[SearchRun]) -> dict:
    """Per position: the modal candidate, its count and the agreement fraction; distinct genotypes.

    Ties for the mode go to the earlier candidate in space order.
    """
    space = runs[0].space
    out = {}
    for p in space.positions:
        counts = Counter(r.choices[p.name] for r in runs)
        modal = max(p.names, key=lambda c: (counts.get(c, 0), -p.names.index(c)))
        out[p.name] = {"modal": modal, "count": counts[modal], "agreement": counts[modal] / len(runs),
                       "counts": {c: counts.get(c, 0) for c in p.names}}
    genotypes = Counter(r.genotype_key() for r in runs)
    return {"positions": out, "runs": len(runs), "distinct_genotypes": len(genotypes),
            "mean_agreement": float(np.mean([v["agreement"] for v in out.values()]))}


def seeds_agreement(runs: Sequence[SearchRun]) -> Figure:
    """Each run's final probabilities side by side (chosen cells outlined) + per-position agreement."""
    ag = agreement(runs)
    pos = runs[0].positions
    ncol = max(len(p.names) for p in pos)
    R = len(runs)
    cell_w = 0.62 if _uniform(runs[0].space) else 0.75
    fig = new_figure(1.6 + R * (cell_w * ncol + 0.25) + 3.2, 2.6 + 0.4 * len(pos))
    gs = fig.add_gridspec(1, R + 1, width_ratios=[ncol] * R + [max(3.0, 0.9 * ncol)])
    heat_axes = []
    im = None
    for k, r in enumerate(runs):
        ax = fig.add_subplot(gs[0, k])
        im = draw_heatmap(ax, r, fontsize=7, row_labels=(k == 0), tag=f"{r.slug}:")
        ax.set_title(r.label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        heat_axes.append(ax)
    heat_axes[0].set_ylabel("position")
    ax = fig.add_subplot(gs[0, R])
    ax.set_gid("agreement")
    ax.set_ylim(len(pos) - 0.5, -0.5)  # rows as in the heat-maps
    colors = candidate_colors([c for p in pos for c in p.names])
    for i, p in enumerate(pos):
        a = ag["positions"][p.name]
        ax.barh(i, a["agreement"], height=0.6, color=colors[a["modal"]], gid=f"agreement:{p.name}")
        tie = sum(v == a["count"] for v in a["counts"].values()) > 1
        ax.text(a["agreement"] + 0.02, i, f"{a['modal']} {a['count']}/{R}" + (" (tie)" if tie else ""),
                va="center", fontsize=8)
    ax.set_xlim(0, 1.45)
    ax.set_xticks([0, 0.5, 1.0])
    ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("agreement\n(fraction choosing the modal candidate)", fontsize=8)
    ax.tick_params(axis="y", labelleft=False, length=0)
    ax.set_title("agreement", fontsize=9)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    fig.colorbar(im, ax=heat_axes, location="bottom", shrink=0.5, aspect=30, label="probability (chosen outlined)")
    fig.suptitle(f"{R} search runs of {runs[0].space.name}: {ag['distinct_genotypes']} distinct genotype"
                 f"{'s' if ag['distinct_genotypes'] != 1 else ''}, mean agreement {ag['mean_agreement']:.2f}",
                 fontsize=11)
    return fig


def seeds_trajectories(runs: Sequence[SearchRun]) -> Figure:
    """Per position: the probability of the modal candidate in every run (one colour per run)."""
    ag = agreement(runs)
    pos = runs[0].positions
    nrows, ncols = grid_shape(len(pos))
    fig = new_figure(3.1 * ncols, 2.1 * nrows + 1.4)
    axes, ncols = _panel_grid(fig, len(pos))
    colors = series_colors(len(runs))
    for ax, p in zip(axes, pos):
        ax.set_gid(f"position:{p.name}")
        a = ag["positions"][p.name]
        j = p.names.index(a["modal"])
        shade_warmup(ax, runs[0].history.steps, runs[0].history.warm, tag=p.name)
        ax.axhline(1.0 / len(p.names), color="0.6", ls=":", lw=0.8)
        for r, col in zip(runs, colors):
            h = r.history
            ax.plot(h.steps, h.probs[p.name][:, j], color=col, lw=1.3, marker="o" if len(h.steps) <= 30 else None,
                    ms=3)
        ax.set_title(f"{p.name}: P({a['modal']}), {a['count']}/{len(runs)} agree", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, lw=2, label=r.label) for r, c in zip(runs, colors)]
    handles.append(Line2D([], [], color="0.6", ls=":", lw=1, label="uniform 1/n"))
    if runs[0].history.warm.any():
        handles.append(Patch(color=WARMUP_COLOR, label=f"warm-up ({runs[0].label})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(f"Probability of the modal candidate during the search, {len(runs)} runs of "
                 f"{runs[0].space.name}", fontsize=10)
    return fig


def group_by_space(runs: Sequence[SearchRun]) -> List[List[SearchRun]]:
    groups: Dict[tuple, List[SearchRun]] = {}
    for r in runs:
        groups.setdefault(tuple((p.name, tuple(p.names)) for p in r.positions), []).append(r)
    return list(groups.values())
