"""`osnas derive --stem-first`: a pass after retrieval that may move one block IN site to the stem.

An answer with a BN stem and IN at block sites is a supernet that wants appearance removed
somewhere but placed it by its own training trajectory (on one synthetic test-bed, supernets
that missed the stem each put IN at a different block site). For each such site the path with
that site back at its simplest candidate and IN in the stem is scored on the same units,
paired; the best of them replaces the answer unless it scores below it by more than the gate.

It is a prior (IN removes appearance early: Pan et al., "Two at Once: Enhancing Learning and
Generalization Capacities via IBN-Net", ECCV 2018), and no default uses it: on an independent
family whose domains differ in camera degradations it overrode the supernets' own evidence
(issue #32). The record (`stem_first` on the stem position) keeps every tried
site's difference in standard errors.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, List, Sequence, Tuple

from osnas.derive.retrieval import _mean_se, describe
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype


def stem_index(space) -> int:
    """The index of the position that searches the stem; an OsnasError where the space does not."""
    for i, p in enumerate(space.positions):
        if p.unit == "stem" and max(p.in_counts) > 0:
            return i
    raise OsnasError(f"--stem-first moves IN into the stem, but space {space.name!r} does not search the stem "
                     "(no position of unit 'stem' with an IN candidate)")


def move_to_stem(per_batch: Callable[[List[int]], List[float]], space, path: Sequence[int],
                 z: float) -> Tuple[List[int], dict]:
    """`path` with one block IN site moved to the stem, where that costs no more than `z`
    standard errors.

    Applies when the stem is at its simplest candidate (BN) and some other position holds IN:
    for each such position k the path with k at its simplest candidate and the stem at its IN
    candidate is scored on the same units as `path` (per_batch: per-unit scores, paired); the
    best by mean is taken unless its mean difference to `path` is below -z standard errors.
    Returns (path, record): record["tried"] = {position: difference in standard errors},
    record["moved_from"] = the position whose IN went to the stem (None: nothing moved)."""
    path = [int(c) for c in path]
    s = stem_index(space)
    P = space.positions
    stem = P[s]
    record: dict = {"tried": {}, "moved_from": None, "gate_se": z}
    sites = [k for k, p in enumerate(P) if k != s and p.in_counts[path[k]]]
    if stem.in_counts[path[s]] or not sites:
        return path, record
    with_in = max(range(len(stem.names)), key=lambda c: (stem.in_counts[c] > 0, -stem.in_counts[c], -c))
    base = per_batch(path)
    best = None  # (mean difference, its standard error, position, path)
    for k in sites:
        q = list(path)
        q[s], q[k] = with_in, P[k].simplest
        m, se = _mean_se([a - b for a, b in zip(per_batch(q), base)])
        record["tried"][P[k].name] = round(m / se, 3) if se > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))
        if best is None or m > best[0]:
            best = (m, se, k, q)
    m, se, k, q = best
    if m >= -z * se:
        record["moved_from"] = P[k].name
        return q, record
    return path, record


def stem_first(g: Genotype, space, per_batch: Callable[[List[int]], List[float]], z: float) -> Genotype:
    """The pass: `g` (one run's retrieval answer) after `move_to_stem`, its positions described
    again at the new point, the move recorded as `stem_first` on the stem position."""
    path = [p.names.index(g.positions[p.name]["choice"]) for p in space.positions]
    moved, record = move_to_stem(per_batch, space, path, z)
    described = describe(per_batch, space, moved, z) if moved != path else [{} for _ in space.positions]
    positions = {}
    for p, c, d in zip(space.positions, moved, described):
        rec = dict(g.positions[p.name], choice=p.names[c], **d)
        if p.unit == "stem":
            rec["stem_first"] = record
        positions[p.name] = rec
    choices = {k: v["choice"] for k, v in positions.items()}
    return replace(g, plan=space.plan_for(choices), positions=positions)
