"""Several runs into one answer: each run read alone, then a majority per position.

This is the one combine rule for several runs (`osnas derive --run A B C`, or a search folder of
several supernets). Every run gives its own genotype, by the selection its search calls for
(or --select), and each position takes the candidate most runs chose; a tie goes to the
candidate with fewer IN sites, then to the earlier candidate of the space (no IN stays the null
answer). A site one supernet in three picks by its own bias is voted out; an effect two in
three see stays. Answers are added up, not data: pooling the runs' scores into one ascent, or
averaging their alphas, lets near-noise effects pass on the runs' summed biases. On the
synthetic test-beds the vote made answers agree across seeds more often than one supernet did
(experiments/README.md). It costs one search per run.
"""

from __future__ import annotations

from typing import Sequence

from osnas.derive.runs import SearchRun, _agreement, _genotype, _mean_probs
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype

TIE_BREAK = "fewer IN sites, then the earlier candidate of the space"


def select_vote(runs: Sequence[SearchRun], alone: Sequence[Genotype]) -> Genotype:
    """The majority genotype of `runs`, `alone[r]` being run r's own genotype.

    `positions[p]["votes"]` = runs per candidate chosen by any run; `positions[p]["run_choices"]`
    = each run's own choice, in the order of `runs` (with `run_scores`, each run's candidate
    scores where its selection scored them, and `run_stem_first`, each run's stem-move record,
    where the runs had one); `agreement` = the chosen candidate's share of the votes."""
    if len(runs) < 2 or len(alone) != len(runs):
        raise OsnasError(f"a vote combines several runs, got {len(runs)}")
    space = runs[0].space
    chosen, extra, picks = [], [], []
    for p in space.positions:
        names = [g.positions[p.name]["choice"] for g in alone]
        counts = [names.count(n) for n in p.names]
        top = max(counts)
        chosen.append(min((c for c in range(len(p.names)) if counts[c] == top), key=lambda c: (p.in_counts[c], c)))
        picks.append([p.names.index(n) for n in names])
        e = {"votes": {n: k for n, k in zip(p.names, counts) if k},
             "run_choices": names, "run_select": sorted({g.select for g in alone}), "tie_break": TIE_BREAK}
        if all("scores" in g.positions[p.name] and "gap_se" in g.positions[p.name] for g in alone):
            e["run_scores"] = [{k: g.positions[p.name][k] for k in ("scores", "gap_se")} for g in alone]
        moves = [g.positions[p.name].get("stem_first") for g in alone]
        if any(m is not None for m in moves):
            e["run_stem_first"] = moves
        extra.append(e)
    per_run = [[picks[i][r] for i in range(len(picks))] for r in range(len(runs))]
    return _genotype(runs, "vote", chosen, _mean_probs(runs), _agreement(per_run, chosen), extra)
