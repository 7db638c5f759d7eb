"""What `osnas derive` prints: per position the choice and what it rests on, then the verdict."""

from __future__ import annotations

import sys
from typing import Dict

from osnas.derive.retrieval import GALLERIES
from osnas.models.genotype import Genotype


def print_summary(g: Genotype, file=sys.stderr) -> None:
    """The table of positions (a vote: each run's own choice; retrieval: the chosen candidate's
    held-out mAP and why; alphas: the probability), the IN sites, the check against the
    published designs, and the deployment cost."""
    print(f"the search's answer from {', '.join(g.runs)} (select {g.select}; {g.space}"
          + (f", step {g.step}" if g.step is not None else "") + f", sources {','.join(g.sources)}):", file=file)
    table = _vote_rows if g.select == "vote" else _retrieval_rows if g.select in GALLERIES else _alpha_rows
    for line in table(_searched(g)):
        print(line, file=file)
    searched = (g.decision or {}).get("searched_in_sites")
    if g.decision.get("verdict") == "published":
        print(f"the search's answer has IN at: {', '.join(searched) or 'nowhere (plain OSNet)'}", file=file)
    else:
        print(f"IN at: {', '.join(g.in_sites()) or 'nowhere (plain OSNet)'}", file=file)
    for line in _decision_lines(g.decision) + _cost_lines(g.cost):
        print(line, file=file)


def _searched(g: Genotype) -> Genotype:
    """`g` as the search answered, before the check replaced it by a published design."""
    from dataclasses import replace

    own = (g.decision or {}).get("searched")
    if not own or g.decision.get("verdict") != "published":
        return g
    return replace(g, positions={k: dict(v, choice=own[k]) for k, v in g.positions.items()})


def _widths(g: Genotype) -> tuple:
    return (max([len(k) for k in g.positions] + [len("position")]),
            max([len(v["choice"]) for v in g.positions.values()] + [len("choice")]))


def _vote_rows(g: Genotype) -> list:
    w, cw = _widths(g)
    out = [f"  {'position':<{w}}  {'choice':<{cw}}  {'votes':>5}  the runs' own choices"]
    for k, v in g.positions.items():
        c, votes = v["choice"], v.get("votes", {})
        out.append(f"  {k:<{w}}  {c:<{cw}}  {votes.get(c, 0):>2}/{len(g.runs):<2}  " + " ".join(v.get("run_choices", [])))
        for run, rec in zip(g.runs, v.get("run_stem_first", [])):
            if rec and rec.get("moved_from"):
                out.append(f"    stem first: {run}: IN moved from {rec['moved_from']} to the {k} "
                           f"({rec['tried'][rec['moved_from']]:+.1f} SE, gate {rec['gate_se']:g})")
    return out


def _retrieval_rows(g: Genotype) -> list:
    w, cw = _widths(g)
    out = [f"  {'position':<{w}}  {'choice':<{cw}}  {'mAP %':>6}  why"]
    for k, v in g.positions.items():
        c = v["choice"]
        rec = v.get("stem_first") or {}
        why = (f"IN moved here from {rec['moved_from']} (--stem-first: {rec['tried'][rec['moved_from']]:+.1f} SE, "
               f"gate {rec['gate_se']:g})") if rec.get("moved_from") else _retrieval_why(c, v["scores"], v["gap_se"])
        out.append(f"  {k:<{w}}  {c:<{cw}}  {100 * v['scores'][c]:>6.2f}  {why}")
    return out


def _alpha_rows(g: Genotype) -> list:
    w, cw = _widths(g)
    perturb = any("scores" in v for v in g.positions.values())
    out = [f"  {'position':<{w}}  {'choice':<{cw}}  {'prob':>6}" + (f"  {'drop':>10}" if perturb else "")
           + f"  {'H':>5}"]
    for k, v in g.positions.items():
        c = v["choice"]
        out.append(f"  {k:<{w}}  {c:<{cw}}  {v['probs'][c]:>6.3f}" + (f"  {v['scores'][c]:>+10.5f}" if perturb else "")
                   + f"  {v['entropy']:>5.3f}")
    return out


def _retrieval_why(choice: str, scores: Dict[str, float], gaps: Dict[str, float]) -> str:
    best = max(scores, key=lambda c: scores[c])
    if best != choice and scores[best] > scores[choice]:
        return (f"{best} {100 * (scores[best] - scores[choice]):+.2f} but within {gaps[choice]:.1f} SE: "
                "noise, the fewer IN sites kept")
    rest = ", ".join(f"{c} -{gaps[c]:.1f}" for c in scores if c != choice)
    return f"best; the others below it in SE: {rest}" if rest else "the only candidate"


def _decision_lines(d: dict) -> list:
    """The check against the published designs (decide.py), or nothing where none was made."""
    if not d or "scores" not in d:
        return [f"published designs: {d['verdict']}"] if d else []
    s, best = d["scores"], d["best_published"]
    scores = " | ".join(f"{n} {100 * v:.2f}" + (" (best published)" if n == best else "") for n, v in s.items())
    return [f"against the published designs, on kept-out people the choice never saw ({d['units']} identities), "
            "retrieval mAP %:",
            f"  {scores}",
            f"  searched - {best}: {100 * d['difference']:+.2f} +- {100 * d['difference_se']:.2f} "
            f"({d['z']:+.1f} SE; gate {d['gate_se']:g})",
            f"recommended: {d['recommended']}" + (" (a published design)" if d["verdict"] == "published" else "")
            + f": the searched answer {d['why']}"]


def _cost_lines(c: dict) -> list:
    if not c:
        return []
    line = (f"cost ({c['backend']}, {c['method']}): predicted {c['relative']:.3f}x the all-BN network "
            f"({c['predicted_ms']:.3f} ms)")
    if "latency_ms" in c:
        line += f"; measured {c['latency_ms']:.3f} ms = {c['measured_relative']:.3f}x"
    if c.get("budget"):
        line += f"; budget {c['budget']:g}x"
    return [line] + [f"  over budget: {sw['position']} {sw['from']} -> {sw['to']} (saves {sw['saved']:.4f})"
                     for sw in c.get("switches", [])]
