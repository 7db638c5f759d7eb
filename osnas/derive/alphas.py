"""Selection methods that read the alphas: argmax (one run) and consensus (several runs)."""

from __future__ import annotations

from typing import Sequence

from osnas.derive.runs import SearchRun, _agreement, _best, _genotype, _mean_probs
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype


def select_argmax(runs: Sequence[SearchRun], **_) -> Genotype:
    """Per position the candidate of largest probability (ties: the earlier candidate). One run."""
    if len(runs) != 1:
        raise OsnasError(f"select argmax takes one run, got {len(runs)}; use --select consensus (or perturb) "
                         "to combine several")
    r = runs[0]
    chosen = r.argmax()
    return _genotype(runs, "argmax", chosen, r.probs, [1.0] * len(chosen))


def select_consensus(runs: Sequence[SearchRun], **_) -> Genotype:
    """Per position the argmax of the runs' mean probabilities.

    Ties of the mean (exact equality) go to the candidate that more runs chose by their own
    argmax, then to the earlier candidate in the space. `agreement` = fraction of runs whose
    own argmax is the chosen candidate; `positions[p]["votes"]` = runs per candidate."""
    mean = _mean_probs(runs)
    per_run = [r.argmax() for r in runs]
    chosen, extra = [], []
    for i, p in enumerate(runs[0].space.positions):
        votes = [sum(rc[i] == j for rc in per_run) for j in range(len(p.candidates))]
        chosen.append(_best([(float(mean[i][j]), votes[j]) for j in range(len(p.candidates))]))
        extra.append({"votes": dict(zip(p.names, votes))})
    return _genotype(runs, "consensus", chosen, mean, _agreement(per_run, chosen), extra)
