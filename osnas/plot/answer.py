"""What a search's answer rests on, from the genotype file derive wrote: each supernet's own
choice per position and the vote (left), and the check against the published designs: the
retrieval mAP of the searched answer and of each published design on kept-out people the
choice never saw, with their standard errors (right).

Artists carry gids: vote cells "vote:POSITION:RUN", the final column "answer:POSITION", decision
bars "decision:NAME".
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from osnas.plot.common import CHOSEN_COLOR, candidate_colors, new_figure


def answer_figure(answer: dict, space, runs: List[str], title: str) -> Figure:
    """Votes and the check of a genotype dict (`answer`) of `space`; `runs`: the supernets' labels."""
    decision = answer.get("decision") or {}
    has_check = "scores" in decision
    fig = new_figure(4.0 + 0.9 * max(len(runs), 1) + (4.2 if has_check else 0.0), 2.2 + 0.42 * len(space.positions))
    axes = fig.subplots(1, 2 if has_check else 1, squeeze=False, width_ratios=[1.3, 1] if has_check else None)[0]
    _votes(axes[0], answer, space, runs)
    if has_check:
        _decision(axes[1], decision)
    fig.suptitle(title, fontsize=11)
    return fig


def _own_choices(answer: dict, space, n: int) -> List[List[str]]:
    """Per position each run's own choice (a single run: its choice)."""
    pos = answer.get("positions") or {}
    out = []
    for p in space.positions:
        e = pos.get(p.name) or {}
        out.append(list(e.get("run_choices") or [e.get("choice", "")] * n))
    return out


def _votes(ax, answer: dict, space, runs: List[str]) -> None:
    pos = space.positions
    own = _own_choices(answer, space, max(len(runs), 1))
    searched = (answer.get("decision") or {}).get("searched") or {p.name: answer["positions"][p.name]["choice"]
                                                                  for p in pos}
    final = {p.name: answer["positions"][p.name]["choice"] for p in pos}
    cols = [*runs, "search", "answer"]
    colors = candidate_colors([c for p in pos for c in p.names])
    for i, p in enumerate(pos):
        row = own[i] + [searched[p.name], final[p.name]]
        for j, c in enumerate(row):
            gid = (f"vote:{p.name}:{j}" if j < len(runs) else f"answer:{p.name}" if j == len(cols) - 1
                   else f"search:{p.name}")
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=colors.get(c, "0.8"), alpha=0.35,
                                   edgecolor=CHOSEN_COLOR if j == len(cols) - 1 else "white", lw=2, gid=gid))
            ax.text(j, i, c, ha="center", va="center", fontsize=8,
                    fontweight="bold" if j >= len(runs) else "normal")
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(pos) - 0.5, -0.5)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, fontsize=8, rotation=30, ha="right")
    ax.set_yticks(range(len(pos)))
    ax.set_yticklabels([p.name for p in pos], fontsize=9)
    ax.tick_params(length=0)
    ax.axvline(len(runs) - 0.5, color="0.3", lw=1)
    tie = ""
    first = (answer.get("positions") or {}).get(pos[0].name) or {}
    if first.get("tie_break"):
        tie = f"; a tie goes to {first['tie_break']}"
    ax.set_title(f"each supernet's own choice, the vote{tie}, and the answer after the check", fontsize=8,
                 color="0.3", wrap=True)


def _decision(ax, d: dict) -> None:
    names = list(d["scores"])
    mean = np.array([100 * d["scores"][n] for n in names])
    se = np.array([100 * (d.get("score_se") or {}).get(n, 0.0) for n in names])
    colors = ["#ff7f0e" if n == "searched" else "#1f77b4" for n in names]
    bars = ax.barh(range(len(names)), mean, xerr=se, color=colors, alpha=0.8, capsize=3)
    for b, n in zip(bars, names):
        b.set_gid(f"decision:{n}")
        if n == d.get("recommended") or (n == "searched" and d.get("verdict") == "searched"
                                          and d.get("recommended") == "searched"):
            b.set_edgecolor(CHOSEN_COLOR)
            b.set_linewidth(2.5)
    vs = d.get("versus") or {}
    for i, n in enumerate(names):
        if n in vs:
            ax.text(mean[i] + se[i], i, f"  searched {100 * vs[n]['difference']:+.1f} ({vs[n]['z']:+.1f} SE)",
                    va="center", fontsize=7, color="0.25")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    lo = max(0.0, float((mean - se).min()) - 5.0)
    ax.set_xlim(lo, float((mean + se).max()) + 0.35 * (float((mean + se).max()) - lo) + 1.0)
    ax.set_xlabel("retrieval mAP (%) on kept-out people, ± standard error")
    ax.legend(handles=[Patch(facecolor="none", edgecolor=CHOSEN_COLOR, lw=2.5, label=f"recommended: "
                             f"{d.get('recommended')}")], loc="lower right", fontsize=7, frameon=False)
    ax.set_title(f"the check: {d['units']} identities; the gate {d['gate_se']:g} SE over the best published "
                 f"({d['best_published']})", fontsize=8, color="0.3", wrap=True)


def run_labels(n: int, names: Optional[List[str]] = None) -> List[str]:
    return list(names) if names else [f"run {k + 1}" for k in range(n)]
