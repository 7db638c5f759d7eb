"""The last pass of `osnas derive`: is the searched answer better than the published designs?

A practitioner who runs no search retrains OSNet, OSNet-IBN and OSNet-AIN and keeps the best on
a kept-out source. The search should only recommend something else where it has evidence that
the something else is better. Every published design that the space can express is scored by
the same supernets as the searched answer, on kept-out people the selection never saw (the other
half of the kept-out identities, retrieval.identity_half), so the answer's score is not inflated
by having been picked on them. Per run the units are paired (each identity's AP under both
networks); several runs' units are pooled. The answer is recommended only where it beats the
best published design by more than the gate in standard errors; otherwise that design is
recommended (also where the answer is itself another published design: the supernets' own
evidence then ranks the published designs), and the genotype file and the printout say why.
Either way the record (`decision`) keeps every score, the searched answer and the margin, so the
user sees where IN matters and how sure the tool is.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Dict, List, Sequence

from osnas.derive.retrieval import _mean_se
from osnas.models.genotype import NAMED, Genotype


def published_paths(space, names: Sequence[str]) -> Dict[str, List[int]]:
    """{design: candidate index per position} for the published designs the space can express."""
    out = {}
    for n in names:
        ch = space.choices_for(NAMED[n])
        if ch is not None:
            out[n] = [p.names.index(ch[p.name]) for p in space.positions]
    return out


def check_published(g: Genotype, space, units: Sequence[Callable[[List[int]], List[float]]],
                    names: Sequence[str], gate: float, runs_choices: Sequence[List[str]] = ()) -> Genotype:
    """`g` (the searched answer), or the best published design where `g` does not beat it by more
    than `gate` standard errors on `units` (per run: path -> per-unit scores on fresh batches).
    `runs_choices`: each run's own choice per position, for the agreement of the final answer."""
    designs = published_paths(space, names)
    if not designs:
        return replace(g, decision={"verdict": "no published design in this space", "against": list(names)})
    answer = [p.names.index(g.positions[p.name]["choice"]) for p in space.positions]

    def pooled(path):  # every run's units of this path, concatenated (run by run, so pairs line up)
        return [x for u in units for x in u(path)]

    base = pooled(answer)
    scores = {n: pooled(path) for n, path in designs.items()}
    mean = {n: sum(v) / len(v) for n, v in scores.items()}
    best = max(designs, key=lambda n: (mean[n], -list(designs).index(n)))
    vs = {n: _paired(base, v) for n, v in scores.items()}  # the answer minus each design, paired
    m, se, z = vs[best]["difference"], vs[best]["se"], vs[best]["z"]
    same = best if designs[best] == answer else None  # the answer is the best published design itself
    rec = {"against": list(names), "units": len(base), "gate_se": gate,
           "scores": {"searched": round(sum(base) / len(base), 6), **{n: round(v, 6) for n, v in mean.items()}},
           "score_se": {"searched": round(_mean_se(base)[1], 6),
                        **{n: round(_mean_se(v)[1], 6) for n, v in scores.items()}},
           "versus": vs,
           "best_published": best, "difference": m, "difference_se": se, "z": z,
           "searched": {p.name: p.names[c] for p, c in zip(space.positions, answer)},
           "searched_in_sites": g.in_sites()}
    if same is not None:
        rec.update(verdict="searched", recommended=same, why=f"is {same}, the best published design here")
        return replace(g, decision=rec, name=same)
    if z > gate:
        rec.update(verdict="searched", recommended="searched",
                   why=f"beats {best}, the best published design here, by {100 * m:+.2f} mAP ({z:.1f} SE > {gate:g})")
        return replace(g, decision=rec)
    why = f"does not beat {best} beyond the noise ({100 * m:+.2f} mAP, {z:.1f} SE <= {gate:g})"
    rec.update(verdict="published", recommended=best, why=why)
    return _as_design(g, space, designs[best], best, rec, runs_choices)


def _paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """a - b over paired units: mean, its standard error and the mean in standard errors."""
    m, se = _mean_se([x - y for x, y in zip(a, b)])
    z = m / se if se > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))
    return {"difference": round(m, 6), "se": round(se, 6), "z": round(z, 3)}


def _as_design(g: Genotype, space, path: List[int], name: str, rec: dict, runs_choices) -> Genotype:
    """`g` with its choices replaced by a published design's; agreement = the share of the runs
    whose own choice is the design's at each position."""
    positions, agreement = {}, {}
    for i, (p, c) in enumerate(zip(space.positions, path)):
        positions[p.name] = dict(g.positions[p.name], choice=p.names[c])
        own = [rc[i] for rc in runs_choices]
        agreement[p.name] = round(own.count(p.names[c]) / len(own), 6) if own else g.agreement.get(p.name, 1.0)
    choices = {k: v["choice"] for k, v in positions.items()}
    return replace(g, plan=space.plan_for(choices), positions=positions, agreement=agreement, name=name,
                   decision=rec)
