"""`osnas derive --select retrieval | retrieval-pooled`: ask the supernet which one-hot subnet
retrieves best.

The other selection methods read the alphas (argmax, consensus) or the supernet's alpha loss
(perturb). Measured on the synthetic test-bed (experiments/synthetic/RESULTS.md), neither
ranks architectures as retraining does: the supernet's loss gives a Kendall tau near 0
against the retrained held-out mAP of 20 random architectures, and it prefers IN in the
last stage where retraining shows IN costs about 2.5 mAP. A loss depends on the scale of the
features and on a classifier trained on the mixture; IN rescales features per image. The
question re-ID asks is different: is the right identity ranked first, by cosine distance,
among images of a domain? This module asks the supernet exactly that, one subnet at a time:

    score(subnet) = mean over validation batches of the all-against-all retrieval mAP
                    inside the batch (cosine; each image a query against the others),
                    with the subnet's BN statistics re-estimated first.

BN recalibration: a weight-sharing supernet's running BN statistics belong to the mixture
(or to whatever paths were sampled), not to any one subnet; before a subnet is scored, its
BN layers are reset and re-estimated, as a cumulative average, on a few weight batches
(single-path one-shot NAS does the same: Guo et al., "Single Path One-Shot Neural
Architecture Search with Uniform Sampling", ECCV 2020). The supernet's weights are not
touched and its statistics are restored afterwards.

Data: the run's own batches (SearchBatches.plan_steps from step 0 with the run's seed):
validation = the alpha-step batches (for search.objective=unseen a source the weights never
saw), recalibration = the weight-step batches, both through the evaluation transform.

The answer "no IN" is the null hypothesis. The search starts from the subnet without IN and
improves it one position at a time (coordinate ascent, positions in the space's order, until a
sweep changes nothing, at most SWEEPS): each candidate is scored with the others fixed, and the
position takes the simplest candidate (fewest IN sites) whose score is not below the best by
more than Z = 2 standard errors of their paired per-batch difference. Every subnet is scored on
the same batches, so two scores differ by the architecture and not by the data, and a
difference inside the noise of the validation batches never buys an IN layer: the
one-standard-error rule of model selection (Breiman et al., "Classification and Regression
Trees", 1984), with the project's two-error threshold. The order is a prior: the stem and the
shallow blocks come first and take an effect before deeper sites can claim it (IN removes
appearance early: Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via
IBN-Net", ECCV 2018); a best-first ascent, which moves the position furthest beyond the gate,
was measured and rejected (README, "Search options that decide how trustworthy the answer is").
With several runs the per-batch scores of all runs' supernets are pooled (one ascent), and a
position's agreement is the fraction of runs whose own scores pick the chosen candidate at the
final point. Pooling shrinks the standard error, and it can pass a candidate no run picks on its
own scores, on the runs' biases added up: a position then chooses only among the simplest
candidate and those some run picks alone (`supported`), so pooled data decide between the runs'
answers but do not make a new one.

retrieval-pooled (derive's default for uniform and unseen-objective runs) pools the validation
batches into one gallery (`identity_aps`) and takes each identity's mean query AP as the paired
unit. Inside one batch of 8 identities retrieval is easy for every subnet (69-89% mAP on the
demo's synth domains, where the retrained subnets differ by 10 points and more), and the batch
score missed the IN stem there in 4 of 5 seeds; pooled, it found it in 4 of 5. On the test-bed
(two configurations x two kinds of supernet) pooling raised the agreement across seeds in 3 of
the 4 and the worst seed's percentile among random architectures in 3 of the 4
(experiments/synthetic/RESULTS.md, RESULTS_synth_recipes.md).

--stem-first (`stem_first`) applies the same shallow-first prior across positions once the ascent
has stopped. An answer with a BN stem and IN at block sites is a supernet that wants appearance
removed somewhere but has placed it by its own training trajectory: on the test-bed's `style`
configuration 8 of 30 uniform supernets put one or two block sites and no two the same, where
19 put IN in the stem (experiments/synthetic/FINDINGS.md). For each such site the path with that
site back at its simplest candidate and IN in the stem is scored on the same units, paired; the
best of them replaces the answer unless it scores below it by more than the gate. The record
(`stem_first` on the stem position) keeps every tried site's difference in standard errors.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from osnas.derive.runs import _agreement, _genotype, _mean_probs, load_supernet
from osnas.errors import OsnasError

SWEEPS = 3
# the selection methods of this module and their score units: per validation batch, or per
# identity of the validation batches pooled into one gallery
GALLERIES = {"retrieval": "batch", "retrieval-pooled": "pooled"}
Z = 2.0  # IN must beat the simplest candidate by more than this many standard errors


def query_aps(features: torch.Tensor, pids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """AP of every image as a query against all the others (cosine), and its identity.

    features (N, D), pids (N,) -> (aps (Q,), query pids (Q,)): queries without another image of
    their identity are left out."""
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.t()  # (N, N)
    n = sim.shape[0]
    sim.fill_diagonal_(float("-inf"))  # the query itself sorts last and is cut off
    order = sim.argsort(dim=1, descending=True)[:, : n - 1]  # (N, N-1) gallery by similarity
    match = (pids[order] == pids[:, None]).float()  # (N, N-1) 1 where the identity matches
    npos = match.sum(1)  # (N,)
    prec = match.cumsum(1) / torch.arange(1, n, dtype=torch.float32)  # precision at each rank
    ap = (prec * match).sum(1) / npos.clamp(min=1)
    valid = npos > 0
    return ap[valid], pids[valid]


def batch_retrieval_map(features: torch.Tensor, pids: torch.Tensor) -> float:
    """mAP of every image of a batch as a query against the rest of the batch (cosine).

    features (B, D), pids (B,). Queries without another image of their identity are skipped;
    NaN when no query has one."""
    ap, _ = query_aps(features, pids)
    return float(ap.mean()) if len(ap) else float("nan")


def identity_aps(features: torch.Tensor, pids: torch.Tensor) -> List[float]:
    """The validation batches pooled into one gallery: per identity (in pid order), the mean AP
    of its images as queries against every other image. One batch holds a few identities, and
    retrieval among them is easy for every subnet (69-89% mAP on the synth domains, where the
    subnets differ by 10 points and more on a larger gallery); the pooled gallery is harder, and
    identities, not batches, are the independent units for the standard error."""
    ap, q = query_aps(features, pids)
    return [float(ap[q == i].mean()) for i in torch.unique(q).tolist()]


def batch_norms(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextmanager
def recalibrated_bn(model: torch.nn.Module, forward: Callable, batches: Sequence):
    """Inside: the model's BN running statistics re-estimated on `batches` (forward(x) in
    train mode, cumulative average), model in eval mode; after: everything restored."""
    bns = batch_norms(model)
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns]
    was = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        model.train()
        with torch.no_grad():
            for b in batches:
                forward(b[0])
        model.eval()
        yield model
    finally:
        for m, (mom, mean, var, n) in zip(bns, saved):
            m.momentum = mom
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
        model.train(was)


class SubnetScorer:
    """`scorer.per_batch(path) -> [score per unit]` of one subnet of a run's supernet (path: a
    candidate index per position), after its BN recalibration: the mAP of each validation batch
    (gallery "batch"), or each identity's mean AP in the batches pooled into one gallery
    ("pooled"); `scorer(path)` is their mean. Cached per path. Batches without two images of one
    identity are left out (for every subnet alike, so the scores stay paired)."""

    def __init__(self, run, batches: int = 4, data_root: str | None = None, device: str = "auto",
                 gallery: str = "batch"):
        if gallery not in GALLERIES.values():
            raise OsnasError(f"unknown retrieval gallery {gallery!r}; valid: {', '.join(GALLERIES.values())}")
        self.gallery = gallery
        sc = load_supernet(run, batches, data_root, device, weight_batches=True)
        self.model, self.calib, self.device = sc.model, sc.calib, sc.device
        keep = [i for i, b in enumerate(sc.val) if len(set(b[1].tolist())) < len(b[1])]
        self.val = [sc.val[i] for i in keep]
        # pooled: each image once. A PK stream draws an image again once it has been through the
        # source (beyond about one epoch of it); an image's copy is its own perfect match, which
        # would inflate every subnet's AP alike and shrink the differences the gate tests
        self.first = None  # (N,) bool over the pooled images: the first copy of each
        if gallery == "pooled" and sc.val_index:
            seen: set = set()
            self.first = torch.tensor([k not in seen and not seen.add(k) for i in keep for k in sc.val_index[i]])
        if len(self.val) < 2:  # one batch gives no standard error: no difference could be told from noise
            raise OsnasError(f"{run.path}: retrieval needs at least 2 validation batches with two images of one "
                             f"identity to estimate its noise; {len(self.val)} of the {len(sc.val)} have "
                             "(raise --batches)")
        self.cache: Dict[Tuple[int, ...], List[float]] = {}

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    def per_batch(self, path: Sequence[int]) -> List[float]:
        key = tuple(int(c) for c in path)
        if key not in self.cache:
            fwd = lambda x: self.model(x, path=list(key))  # noqa: E731
            with recalibrated_bn(self.model, fwd, self.calib), torch.no_grad():
                feats = [fwd(b[0]) for b in self.val]  # per batch (B, D)
            if self.gallery == "pooled":
                f, pids = torch.cat(feats), torch.cat([b[1] for b in self.val]).cpu()
                if self.first is not None:
                    f, pids = f[self.first.to(f.device)], pids[self.first]
                self.cache[key] = identity_aps(f, pids)
            else:
                self.cache[key] = [batch_retrieval_map(f, b[1]) for f, b in zip(feats, self.val)]
        return self.cache[key]

    def __call__(self, path: Sequence[int]) -> float:
        scores = self.per_batch(path)
        return sum(scores) / len(scores)


def _mean_se(xs: Sequence[float]) -> Tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    return m, (sum((x - m) ** 2 for x in xs) / (n - 1) / n) ** 0.5


def pick(rows: Sequence[Sequence[float]], simplicity: Sequence[int], z: float = Z,
         allowed: Sequence[int] | None = None) -> Tuple[int, List[float]]:
    """The simplest candidate whose score is not worse than the best beyond `z` standard errors.

    rows[c]: candidate c's per-batch scores (paired across candidates); simplicity[c]: its IN
    sites (fewer = simpler). The best is the largest mean; a candidate is within the noise when
    the mean of its paired per-batch difference to the best is at most z times that mean's
    standard error. Among those, the fewest IN sites, then the larger mean, then the earlier.
    `allowed`: choose among these candidates only (their best is then the reference), the gaps
    still reported against the best of all.
    Returns (choice, per candidate: that difference in standard errors, 0 for the best)."""
    means = [sum(r) / len(r) for r in rows]
    cands = range(len(rows)) if allowed is None else sorted(set(allowed))

    def gaps_to(best):
        out = []
        for r in rows:
            m, se = _mean_se([b - x for b, x in zip(rows[best], r)])
            out.append(0.0 if m == 0 else (m / se if se > 0 else float("inf")))
        return out

    def best_of(cs):
        return max(cs, key=lambda c: (means[c], -simplicity[c], -c))

    best = best_of(range(len(rows)))
    gaps = gaps_to(best)
    ref = gaps if best_of(cands) == best else gaps_to(best_of(cands))
    within = [c for c in cands if ref[c] <= z]
    return min(within, key=lambda c: (simplicity[c], -means[c], c)), gaps


def supported(run_rows: Sequence[Sequence[Sequence[float]]], simplicity: Sequence[int], z: float = Z) -> List[int]:
    """The candidates of one position that several runs may pool over: the simplest, and each
    run's own `pick` on its own scores (run_rows[r][c]: run r's per-unit scores of candidate c).
    Pooled units shrink the standard error, and a candidate no run picks alone can pass the pooled
    gate on the runs' summed biases: on the test-bed such sites lowered the retrained mAP."""
    simplest = min(range(len(simplicity)), key=lambda c: (simplicity[c], c))
    return sorted({simplest} | {pick(rows, simplicity, z)[0] for rows in run_rows})


def _position(per_batch, simplicity, path, i, z, run_scores=()):
    """Position i of `path` decided by `pick` with the others fixed: (choice, mean score of each
    candidate, its gap to the best in standard errors). With several runs (`run_scores`) the
    choice is made among the `supported` candidates only."""
    paths = [path[:i] + [c] + path[i + 1:] for c in range(len(simplicity[i]))]
    rows = [per_batch(p) for p in paths]
    allowed = supported([[f(p) for p in paths] for f in run_scores], simplicity[i], z) \
        if len(run_scores) > 1 else None
    choice, gaps = pick(rows, simplicity[i], z, allowed)
    return choice, [sum(r) / len(r) for r in rows], gaps


def coordinate_ascent(per_batch: Callable[[List[int]], List[float]], simplicity: Sequence[Sequence[int]],
                      start: Sequence[int], z: float = Z, sweeps: int = SWEEPS,
                      run_scores: Sequence[Callable[[List[int]], List[float]]] = ()):
    """Improve the path one position at a time by `pick`. simplicity[i][c]: IN sites of
    candidate c at position i. With several runs (`run_scores`: each run's own per-unit scores;
    `per_batch` their pooled units) a position chooses among the `supported` candidates only.
    Returns (path, means, gaps, sweeps run), means[i][c] = the mean score with position i set to
    c and the others at the returned path (from the last sweep, so they describe the final
    point), gaps[i][c] its distance to the best in standard errors."""
    path = [int(c) for c in start]
    sizes = [len(s) for s in simplicity]

    def position(i):
        return _position(per_batch, simplicity, path, i, z, run_scores)

    for sweep in range(1, sweeps + 1):
        changed, means, gaps = False, [], []
        for i in range(len(sizes)):
            c, m, g = position(i)
            changed |= c != path[i]
            path[i] = c
            means.append(m)
            gaps.append(g)
        if not changed:
            return path, means, gaps, sweep
    final = [position(i) for i in range(len(sizes))]  # the last sweep moved: describe the final point
    return path, [f[1] for f in final], [f[2] for f in final], sweeps


def stem_index(space) -> int:
    """The index of the position that searches the stem; an OsnasError where the space does not."""
    for i, p in enumerate(space.positions):
        if p.unit == "stem" and max(p.in_counts) > 0:
            return i
    raise OsnasError(f"--stem-first moves IN into the stem, but space {space.name!r} does not search the stem "
                     "(no position of unit 'stem' with an IN candidate)")


def move_to_stem(per_batch: Callable[[List[int]], List[float]], space, path: Sequence[int],
                 z: float = Z) -> Tuple[List[int], dict]:
    """`path` with one block IN site moved to the stem, where that costs no more than `z`
    standard errors (module docstring, --stem-first).

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


def check_gate(z) -> float:
    """The gate in standard errors (`osnas derive --gate`): a finite number >= 0."""
    try:
        v = float(z)
    except (TypeError, ValueError):
        v = float("nan")
    if not v >= 0 or v == float("inf"):
        raise OsnasError(f"--gate {z!r}: expected a number of standard errors >= 0 (default {Z:g})")
    return v


def select_retrieval(runs: Sequence, batches: int = 4, data_root: str | None = None, device: str = "auto",
                     gallery: str = "batch", gate: float = Z, stem_first: bool = False, **_):
    """The subnet of best held-out retrieval mAP (module docstring), as a genotype.

    `positions[p]["scores"]` = each candidate's mAP at the final point (mean over the runs'
    validation batches), `positions[p]["gap_se"]` its distance below the best in standard
    errors, `positions[p]["gate_se"]` the gate it was chosen with (`gate`: IN must beat the
    simplest candidate by more than this many standard errors); with several runs `run_scores`
    per run, and `supported`: the candidates the choice was made among (the simplest and each
    run's own pick at the final point, `supported`). `stem_first`: then move a block IN site to
    the stem where that costs no more than the gate (`move_to_stem`, recorded as
    `positions[stem]["stem_first"]`); the scores describe the final point after the move."""
    z = check_gate(gate)
    space = runs[0].space
    if stem_first:
        stem_index(space)  # a space without a searched stem: the error before any scoring
    simplicity = [p.in_counts for p in space.positions]
    scorers = [SubnetScorer(r, batches, data_root, device, gallery) for r in runs]
    pooled = lambda path: [x for sc in scorers for x in sc.per_batch(path)]  # noqa: E731
    start = [p.simplest for p in space.positions]  # no IN: the null answer
    chosen, means, gaps, _ = coordinate_ascent(pooled, simplicity, start, z=z,
                                               run_scores=[sc.per_batch for sc in scorers])
    moved = None
    if stem_first:
        chosen, moved = move_to_stem(pooled, space, chosen, z)
        if moved["moved_from"]:  # describe the new final point
            final = [_position(pooled, simplicity, chosen, i, z, [sc.per_batch for sc in scorers])
                     for i in range(len(chosen))]
            means, gaps = [f[1] for f in final], [f[2] for f in final]
    rnd = 6

    def alt(i, c):
        return [*chosen[:i], c, *chosen[i + 1:]]

    def run_rows(sc, i):  # one run's scores of every candidate at position i, the others at the final point
        return [sc.per_batch(alt(i, c)) for c in range(len(simplicity[i]))]

    if moved is not None and moved["moved_from"] and len(scorers) == 1:
        per_run = [list(chosen)]  # one run's answer is its own choice: the move changes two positions at once
    else:
        per_run = [[pick(run_rows(sc, i), s, z)[0] for i, s in enumerate(simplicity)] for sc in scorers]
    extra = []
    for i, p in enumerate(space.positions):
        e = {"scores": {n: round(v, rnd) for n, v in zip(p.names, means[i])},
             "gap_se": {n: round(v, 3) for n, v in zip(p.names, gaps[i])}, "gate_se": z}
        if len(runs) > 1:
            e["run_scores"] = [{n: round(sc(alt(i, c)), rnd) for c, n in enumerate(p.names)} for sc in scorers]
            e["supported"] = [p.names[c] for c in supported([run_rows(sc, i) for sc in scorers], simplicity[i], z)]
        if moved is not None and p.unit == "stem":
            e["stem_first"] = moved
        extra.append(e)
    probs = runs[0].probs if len(runs) == 1 else _mean_probs(runs)
    name = next(s for s, g in GALLERIES.items() if g == gallery)
    return _genotype(runs, name, chosen, probs, _agreement(per_run, chosen), extra)


def select_retrieval_pooled(runs: Sequence, **kw):
    """`select_retrieval` scored on the validation batches pooled into one gallery (identity_aps)."""
    return select_retrieval(runs, **dict(kw, gallery="pooled"))
