"""The selection that reads the alphas: argmax, one run at a time."""

from __future__ import annotations

from osnas.derive.runs import SearchRun, _genotype
from osnas.models.genotype import Genotype


def select_argmax(run: SearchRun) -> Genotype:
    """Per position the candidate of largest probability (ties: the earlier candidate)."""
    chosen = run.argmax()
    return _genotype([run], "argmax", chosen, run.probs, [1.0] * len(chosen))
