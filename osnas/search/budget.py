"""The deployment budget of a search: what each IN placement costs at the camera end.

BN folds into the preceding convolution at inference; IN cannot (it normalises with the
statistics of each image), so every IN site costs latency on the deployment path. A cost
table (`osnas profile`, osnas/models/cost.py) gives the latency of every candidate at every
position; from it:

search   the expected relative cost of the alphas, E[cost] = (fixed + sum_pos sum_c p_c
         cost[pos][c]) / cost(all-BN network), differentiable in the alphas as in FBNet (Wu
         et al., CVPR 2019) and ProxylessNAS (Cai et al., ICLR 2019). With a budget T and
         f = max(1, E[cost] / T) ** cost_weight the alpha loss becomes  L_alpha * f + (f - 1):
         ProxylessNAS's multiplicative latency term, switched off while the expected cost is
         within budget (f = 1), so the budget bounds the search without biasing it below the
         budget; the added (f - 1) keeps the pull where L_alpha is 0 (a batch-hard triplet
         loss is 0 on an easy batch, and a product with it would drop the budget there).
derive   `fit_budget`: the chosen architecture never exceeds a hard budget; while it does,
         the position whose cheaper candidate loses the least preference per unit of cost
         saved is switched (a greedy knapsack repair), and the switches are recorded.

`search.cost_table`: "" (no cost), "proxy" (the FLOPs / memory-traffic proxy at the run's
width and input size), or a cost table file written by `osnas profile`.
`search.cost_budget`: latency relative to the all-BN network of the same width (0 = none).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from osnas.errors import OsnasError
from osnas.models import cost as C
from osnas.models import relax
from osnas.models.space import SearchSpace


def cost_table(spec: str, space: SearchSpace, arch: str, height: int, width: int):
    """The cost table a run names (None for ""), checked to fit `space`."""
    spec = str(spec or "").strip()
    if not spec:
        return None
    if spec == "proxy":
        return C.proxy_cost_table(space, arch, height, width, 1)
    return C.load_cost_table(spec, space)


def check_budget(budget: float, where: str = "search.cost_budget") -> float:
    budget = float(budget)
    if budget != budget or budget < 0:
        raise OsnasError(f"{where}={budget}: expected a relative latency >= 0 (0 = no budget; 1.05 = at most 5% "
                         f"slower than the all-BN network)")
    return budget


def cheapest(space: SearchSpace, table) -> Tuple[List[int], float]:
    """The cheapest architecture of `space` on `table` (candidate per position) and its relative cost."""
    names = [p.names for p in space.positions]
    ch = [min(range(len(n)), key=lambda j, i=i: table.latency_ms[space.positions[i].name][n[j]])
          for i, n in enumerate(names)]
    return ch, C.relative_cost(table, {p.name: names[i][c] for i, (p, c) in enumerate(zip(space.positions, ch))})


def check_feasible(space: SearchSpace, table, budget: float, where: str = "search.cost_budget") -> None:
    """A budget below the cheapest architecture of the space is a one-line error, before any work."""
    if table is None or not budget:
        return
    low = cheapest(space, table)[1]
    if low > budget + 1e-12:
        raise OsnasError(f"{where}={budget:g} is below the cheapest architecture of space {space.name} "
                         f"({low:.4f} on this cost table): no architecture fits it")


def with_cost(loss_fn: Callable, model, table, budget: float, weight: float, record: Optional[list] = None):
    """The alpha loss L times f, plus f - 1, f = max(1, E[cost] / budget) ** weight (no change within budget);
    `record[0]` receives the last expected relative cost (a float, for the alpha history)."""
    space = model.space

    def loss(m, batch):
        value = loss_fn(m, batch)
        probs = [relax.probs(a, model.relaxation) for a in model.arch_parameters()]  # with grad
        expected = C.expected_relative_cost(table, space, probs)
        if record is not None:
            record[0] = float(expected.detach())
        if budget > 0 and weight > 0:
            f = (expected / budget).clamp_min(1.0) ** weight
            value = value * f + (f - 1.0)
        return value

    return loss


def expected_cost(model, table) -> float:
    """The expected relative cost of a supernet's current alphas (no gradient)."""
    with torch.no_grad():
        return float(C.expected_relative_cost(table, model.space, model.probs()))


def fit_budget(space: SearchSpace, chosen: List[int], preference: Sequence[torch.Tensor], table,
               budget: float) -> Tuple[List[int], List[dict]]:
    """Switch candidates until the predicted relative cost is within `budget`.

    preference: per position a score per candidate (higher = preferred; the probabilities).
    Each switch takes, over all positions and cheaper candidates, the smallest loss of
    preference per unit of relative cost saved. Returns the new choice and the switches made;
    a budget below the cheapest architecture of the space is a one-line OsnasError."""
    chosen = list(chosen)
    names = [p.names for p in space.positions]

    def rel(ch):
        return C.relative_cost(table, {p.name: names[i][c] for i, (p, c) in enumerate(zip(space.positions, ch))})

    check_feasible(space, table, budget, "cost budget")
    switches: List[dict] = []
    while rel(chosen) > budget + 1e-12:
        best: Optional[tuple] = None
        now = rel(chosen)
        for i, p in enumerate(space.positions):
            for j in range(len(names[i])):
                trial = chosen[:i] + [j] + chosen[i + 1:]
                saved = now - rel(trial)
                if saved <= 1e-12:
                    continue
                lost = float(preference[i][chosen[i]] - preference[i][j])
                key = (lost / saved, -saved)
                if best is None or key < best[0]:
                    best = (key, i, j, saved)
        assert best is not None  # the cheapest architecture fits, so some switch saves cost
        _, i, j, saved = best
        p = space.positions[i]
        switches.append({"position": p.name, "from": names[i][chosen[i]], "to": names[i][j],
                         "saved": round(saved, 6)})
        chosen[i] = j
    return chosen, switches


def cost_record(table, choices: Dict[str, str], budget: float, measured: Optional[dict] = None,
                switches: Optional[list] = None, source: str = "") -> dict:
    """The genotype's `cost` field: backend, predicted relative cost and latency, budget, and
    (when measured) the measured latency and its ratio to the measured all-BN network."""
    rec = {"backend": table.backend, "method": table.method, "table": source or table.path,
           "relative": round(C.relative_cost(table, choices), 6),
           "predicted_ms": round(C.predicted_latency_ms(table, choices), 6),
           "reference_ms": round(float(table.reference_ms), 6), "budget": budget,
           "input": [table.height, table.width], "batch": table.batch, "threads": table.threads}
    if measured:
        rec.update(measured)
    if switches:
        rec["switches"] = switches
    return rec


def measure_cost(plan: Dict[str, str], table, repeats: int = 40) -> dict:
    """Time the network of `plan` and the all-BN network of the same width on the table's
    backend, input size, batch and threads (interleaved): the genotype's measured cost;
    `measured_relative` is the median over rounds of the ratio of the two in that round."""
    from osnas.models import build_model
    from osnas.models.genotype import Genotype
    from osnas.models.latency import measure_networks

    nets = {"genotype": build_model(Genotype(plan=plan, arch=table.arch)).eval(),
            "all_bn": build_model(table.arch).eval()}
    t = measure_networks(nets, table.backend, table.height, table.width, table.batch, table.threads, repeats,
                         getattr(table, "clock", "wall") or "wall")
    g, ref = t["genotype"], t["all_bn"]
    # per-round ratios (both timed in every round): a drift of the machine's speed cancels
    ratios = sorted(a / b for a, b in zip(g["times_ms"], ref["times_ms"]))
    return {"latency_ms": round(g["median_ms"], 6), "latency_iqr_ms": round(g["iqr_ms"], 6),
            "reference_measured_ms": round(ref["median_ms"], 6),
            "measured_relative": round(float(np.median(ratios)), 6), "timings": len(g["times_ms"])}
