"""`osnas derive --select retrieval | retrieval-pooled`: ask the supernet which one-hot subnet
retrieves best.

The other selection methods read the alphas (argmax) or the supernet's alpha loss
(perturb). On the synthetic test-beds neither ranked architectures as retraining does, and
both leaned towards IN where retraining showed it costs mAP (the figures: experiments/README.md).
A loss depends on the scale of the features and on a classifier trained on the mixture; IN
rescales features per image. The question re-ID asks is different: is the right identity ranked first, by cosine distance,
among images of a domain? This module asks the supernet exactly that, one subnet at a time:

    score(subnet) = mean over validation batches of the all-against-all retrieval mAP
                    inside the batch (cosine; each image a query against the others),
                    with the subnet's BN statistics re-estimated first.

BN recalibration: a weight-sharing supernet's running BN statistics belong to the mixture
(or to whatever paths were sampled), not to any one subnet; before a subnet is scored, its
BN layers are reset and re-estimated, as a cumulative average, on a few weight batches
(single-path one-shot NAS does the same: Guo et al., "Single Path One-Shot Neural
Architecture Search with Uniform Sampling", ECCV 2020). The supernet's weights are not
touched and its statistics are restored afterwards. Subnets that share the first steps of
the network share their computation (prefix.py).

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
IBN-Net", ECCV 2018); a best-first ascent was measured and rejected. Each run is read alone;
several runs are combined by vote (vote.py): pooling the runs' units into one ascent shrinks the
standard error and passes sites no run picks alone, on the runs' biases added up.

retrieval-pooled (derive's default for runs judged on data their weights never saw) pools the
validation batches into one gallery (`identity_aps`) and takes each identity's mean query AP as
the paired unit: inside one batch of a few identities retrieval is easy for every subnet and the
differences between subnets saturate; pooled, the gallery is harder, and identities, not
batches, are the independent units. It chooses on one half of the kept-out identities
(`identity_half`), so that derive's check against the published designs (decide.py) can use the
other half, people the choice never saw.

The stem move (--stem-first) and the check against published designs are passes derive runs
after this selection, on the same scorer (moves.py, decide.py).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from osnas.derive.options import GATE as Z
from osnas.derive.prefix import PrefixForward
from osnas.derive.runs import SearchRun, _genotype, load_supernet
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype

SWEEPS = 3
# the selection methods of this module and their score units: per validation batch, or per
# identity of the validation batches pooled into one gallery
GALLERIES = {"retrieval": "batch", "retrieval-pooled": "pooled"}


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
    retrieval among them is easy for every subnet; the pooled gallery is harder, and identities,
    not batches, are the independent units for the standard error."""
    ap, q = query_aps(features, pids)
    return [float(ap[q == i].mean()) for i in torch.unique(q).tolist()]


HALVES = 2  # retrieval-pooled: the kept-out people split in two, one half to choose on, one to check on


class SubnetScorer:
    """`scorer.per_batch(path) -> [score per unit]` of one subnet of a run's supernet (path: a
    candidate index per position), after its BN recalibration on the run's weight batches:

    gallery "batch"   the mAP of each of `batches` validation batches per source (batches
                      without two images of one identity left out, for every subnet alike);
    gallery "pooled"  each identity's mean AP, the validation images pooled into one gallery,
                      each image once. With `half` (0 or 1) twice as many batches are read and
                      only the identities of that half are kept (`identity_half`): derive
                      chooses on half 0 and checks its answer against the published designs on
                      half 1, people the choice never saw.

    `scorer(path)` is the mean of the units. Cached per path."""

    def __init__(self, run, batches: int = 4, data_root: str | None = None, device: str = "auto",
                 gallery: str = "batch", half: Optional[int] = None, loaded=None):
        if gallery not in GALLERIES.values():
            raise OsnasError(f"unknown retrieval gallery {gallery!r}; valid: {', '.join(GALLERIES.values())}")
        if half is not None and gallery != "pooled":
            raise OsnasError("a half of the kept-out identities is a setting of the pooled gallery")
        self.gallery, self.half = gallery, half
        n = batches * (HALVES if half is not None else 1)
        # `loaded`: the same run loaded by another scorer with as many batches (the other half)
        sc = loaded if loaded is not None and loaded.batches == n else load_supernet(run, n, data_root, device,
                                                                                      weight_batches=True)
        self.loaded = sc
        self.model, self.device = sc.model, sc.device
        self.calib = sc.calib[: len(sc.calib) // HALVES] if half is not None else sc.calib
        if gallery == "pooled":
            self.val = _pooled_images(sc, half, int(run.ck.get("seed") or 0))
            enough = len({int(p) for b in self.val for p in b[1]}) >= 2
        else:
            self.val = [b for b in sc.val if len(set(b[1].tolist())) < len(b[1])]
            enough = len(self.val) >= 2
        if not enough:  # one unit gives no standard error: no difference could be told from noise
            raise OsnasError(f"{run.path}: retrieval needs at least 2 validation {'batches' if gallery == 'batch' else 'identities'} "
                             f"with two images of one identity to estimate its noise (raise --batches)")
        self.forward = PrefixForward(self.model, self.calib, self.val)  # steps shared by paths run once
        self.cache: Dict[Tuple[int, ...], List[float]] = {}

    def release(self) -> None:
        """Free the kept activations (the scores stay cached): call when done scoring."""
        self.forward.kept.clear()

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    def per_batch(self, path: Sequence[int]) -> List[float]:
        key = tuple(int(c) for c in path)
        if key not in self.cache:
            feats = self.forward.embeddings(key)  # per batch (B, D)
            if self.gallery == "pooled":
                self.cache[key] = identity_aps(torch.cat(feats), torch.cat([b[1] for b in self.val]).cpu())
            else:
                self.cache[key] = [batch_retrieval_map(f, b[1]) for f, b in zip(feats, self.val)]
        return self.cache[key]

    def __call__(self, path: Sequence[int]) -> float:
        scores = self.per_batch(path)
        return sum(scores) / len(scores)


def identity_half(pids: Sequence[int], seed: int) -> Dict[int, int]:
    """{identity: 0 or 1}: the identities split into two halves by a permutation seeded by the
    run's seed (the first half, rounded up, is 0)."""
    ids = sorted({int(p) for p in pids})
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(int(seed) * 7919 + 17)).tolist()
    return {ids[j]: int(r >= (len(ids) + 1) // 2) for r, j in enumerate(order)}


def _pooled_images(sc, half: Optional[int], seed: int) -> list:
    """The validation batches as one gallery: each image once (a PK stream draws an image again
    once it has been through the source, and an image's copy is its own perfect match, which
    would inflate every subnet's AP alike), only the identities of `half` when given; returned
    as batches of at most the original size, [images (B, C, H, W), pids (B,)]."""
    seen: set = set()
    x, pids = [], []
    for b, index in zip(sc.val, sc.val_index):
        first = torch.tensor([k not in seen and not seen.add(k) for k in index], dtype=torch.bool)
        x.append(b[0][first.to(b[0].device)])
        pids.append(b[1][first.to(b[1].device)].cpu())
    x, pids = torch.cat(x), torch.cat(pids)
    if half is not None:
        side = identity_half(pids.tolist(), seed)
        keep = torch.tensor([side[int(p)] == half for p in pids], dtype=torch.bool)
        x, pids = x[keep.to(x.device)], pids[keep]
    size = max(len(b[1]) for b in sc.val)
    return [[x[i:i + size], pids[i:i + size]] for i in range(0, len(pids), size)]


def _mean_se(xs: Sequence[float]) -> Tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    return m, (sum((x - m) ** 2 for x in xs) / (n - 1) / n) ** 0.5


def pick(rows: Sequence[Sequence[float]], simplicity: Sequence[int], z: float = Z) -> Tuple[int, List[float]]:
    """The simplest candidate whose score is not worse than the best beyond `z` standard errors.

    rows[c]: candidate c's per-unit scores (paired across candidates); simplicity[c]: its IN
    sites (fewer = simpler). The best is the largest mean; a candidate is within the noise when
    the mean of its paired per-unit difference to the best is at most z times that mean's
    standard error. Among those, the fewest IN sites, then the larger mean, then the earlier.
    Returns (choice, per candidate: that difference in standard errors, 0 for the best)."""
    means = [sum(r) / len(r) for r in rows]
    best = max(range(len(rows)), key=lambda c: (means[c], -simplicity[c], -c))
    gaps = []
    for r in rows:
        m, se = _mean_se([b - x for b, x in zip(rows[best], r)])
        gaps.append(0.0 if m == 0 else (m / se if se > 0 else float("inf")))
    within = [c for c in range(len(rows)) if gaps[c] <= z]
    return min(within, key=lambda c: (simplicity[c], -means[c], c)), gaps


def _position(per_batch, simplicity, path, i, z):
    """Position i of `path` decided by `pick` with the others fixed: (choice, mean score of each
    candidate, its gap to the best in standard errors)."""
    paths = [path[:i] + [c] + path[i + 1:] for c in range(len(simplicity[i]))]
    rows = [per_batch(p) for p in paths]
    choice, gaps = pick(rows, simplicity[i], z)
    return choice, [sum(r) / len(r) for r in rows], gaps


def coordinate_ascent(per_batch: Callable[[List[int]], List[float]], simplicity: Sequence[Sequence[int]],
                      start: Sequence[int], z: float = Z, sweeps: int = SWEEPS):
    """Improve the path one position at a time by `pick`. simplicity[i][c]: IN sites of
    candidate c at position i. Returns (path, sweeps run)."""
    path = [int(c) for c in start]
    for sweep in range(1, sweeps + 1):
        changed = False
        for i in range(len(path)):
            c = _position(per_batch, simplicity, path, i, z)[0]
            changed |= c != path[i]
            path[i] = c
        if not changed:
            return path, sweep
    return path, sweeps


def describe(per_batch: Callable[[List[int]], List[float]], space, path: Sequence[int], z: float = Z) -> List[dict]:
    """Per position, at the final `path`: every candidate's mean score with the others fixed
    (`scores`), its distance below the best in standard errors (`gap_se`) and the gate (`gate_se`)
    -- what the genotype file and `osnas plot` show each choice rests on."""
    path = list(path)
    out = []
    for i, p in enumerate(space.positions):
        _, means, gaps = _position(per_batch, [q.in_counts for q in space.positions], path, i, z)
        out.append({"scores": {n: round(v, 6) for n, v in zip(p.names, means)},
                    "gap_se": {n: round(v, 3) for n, v in zip(p.names, gaps)}, "gate_se": z})
    return out


def select_retrieval(run: SearchRun, scorer: SubnetScorer, gate: float = Z) -> Genotype:
    """The subnet of best held-out retrieval mAP (module docstring) of one run, as a genotype:
    starting from no IN, coordinate ascent by `pick` on `scorer`'s units (a SubnetScorer of the
    run, gallery "batch" for retrieval and "pooled" for retrieval-pooled); every position records
    its candidates' scores at the final point (`describe`)."""
    space = run.space
    simplicity = [p.in_counts for p in space.positions]
    start = [p.simplest for p in space.positions]  # no IN: the null answer
    chosen, _ = coordinate_ascent(scorer.per_batch, simplicity, start, z=gate)
    name = next(s for s, g in GALLERIES.items() if g == scorer.gallery)
    return _genotype([run], name, chosen, run.probs, [1.0] * len(chosen), describe(scorer.per_batch, space, chosen, gate))
