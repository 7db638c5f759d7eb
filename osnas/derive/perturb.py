"""Perturbation-based selection (Wang et al., "Rethinking Architecture Selection in
Differentiable NAS", ICLR 2021): per position, keep the candidate whose removal from the
supernet's mixture raises the run's validation loss most (see `perturb_select`)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch

from osnas.derive.options import PERTURB_ORDERS
from osnas.derive.runs import SearchRun, _best, _genotype, load_supernet, run_config
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype

def remove_candidate(w: torch.Tensor, c: int) -> torch.Tensor:
    """Mixing weights `w` without candidate c: its weight set to 0, the others renormalised to
    sum 1 (if the others carry no weight at all, e.g. one-hot w on c: uniform over them)."""
    out = w.clone()
    out[c] = 0.0
    s = float(out.sum())
    if s > 0:
        return out / s
    out = torch.ones_like(w)
    out[c] = 0.0
    return out / out.sum()


def onehot(n: int, c: int, like: torch.Tensor | None = None) -> torch.Tensor:
    w = torch.zeros(n) if like is None else torch.zeros_like(like)
    w[c] = 1.0
    return w


@dataclass
class PerturbResult:
    chosen: List[int]  # per position, the candidate kept
    scores: List[List[float]]  # per position and candidate: loss without it - loss with the mixture
    base: List[float]  # per position, the loss of the mixture it was scored against
    rank: List[int]  # per position, the step at which it was decided (0 = first)


def perturb_select(probs: Sequence[torch.Tensor], loss_of: Callable[[List[torch.Tensor]], float],
                   order: str = "fixed") -> PerturbResult:
    """Progressive perturbation-based selection over positions, given a validation loss.

    probs: per position the starting mixing weights (the run's probabilities); loss_of(weights)
    -> the validation loss of the supernet mixing with `weights` (one tensor per position).
    While positions are undecided: the current mixture (decided positions one-hot, the others
    at their probabilities) gives a base loss L0; for a position being scored, candidate c
    gets the score  L(mixture with c removed at that position, see remove_candidate) - L0,
    and the candidate with the largest score (its removal hurts most) is kept: that position
    becomes one-hot on it before the next is scored. Ties: the larger probability, then the
    earlier candidate.

    order "fixed": positions in the space's order (one base loss and one removal per candidate
    per position: P * (C + 1) evaluations). "greedy": every round scores all undecided
    positions and decides the one whose best score is largest (sum over rounds, ~P^2 C / 2
    evaluations); a position's recorded scores are those of the round that decided it.
    """
    if order not in PERTURB_ORDERS:
        raise OsnasError(f"unknown perturb order {order!r}; valid: {', '.join(PERTURB_ORDERS)}")
    weights = [p.detach().clone().float() for p in probs]
    n = len(weights)
    chosen, scores, base, rank = [-1] * n, [[] for _ in range(n)], [0.0] * n, [-1] * n
    undecided = list(range(n))
    step = 0
    while undecided:
        l0 = float(loss_of(weights))
        round_scores = {}
        for i in (undecided if order == "greedy" else undecided[:1]):
            s = []
            for c in range(len(weights[i])):
                trial = list(weights)
                trial[i] = remove_candidate(weights[i], c)
                s.append(float(loss_of(trial)) - l0)
            round_scores[i] = s
        picks = {i: _best([(s[c], float(probs[i][c])) for c in range(len(s))]) for i, s in round_scores.items()}
        # greedy: the position whose best removal hurts most (ties: the earlier position)
        i = max(round_scores, key=lambda k: (round_scores[k][picks[k]], -k))
        chosen[i], scores[i], base[i], rank[i] = picks[i], round_scores[i], l0, step
        weights[i] = onehot(len(weights[i]), picks[i], weights[i])
        undecided.remove(i)
        step += 1
    return PerturbResult(chosen, scores, base, rank)


@contextmanager
def scoring_mode(model):
    """Eval mode (BN running statistics, as at test time) with the head answering as in
    training (logits and the metric feature), so the search's alpha loss can be computed."""
    was = model.training
    model.eval()
    head = getattr(getattr(model, "net", model), "head", None)
    if head is not None:
        head.training = True  # the head module's own flag only; its BN stays in eval mode
    try:
        yield model
    finally:
        model.train(was)


class PerturbScorer:
    """The validation loss of a run's supernet at given mixing weights: `scorer(weights)`.

    Built from the run's checkpoint (weights and alphas) and its config.yaml (data, model,
    alpha loss). The validation set is the run's own alpha-step data (`load_supernet`): N
    batches of each source's alpha stream for lodo; for heldout N PK sub-batches of every
    source's held-out images; for unseen N batches of the unseen source. The loss is the mean over these batches of the run's
    alpha loss (make_loss_fn(search.alpha_loss), without the entropy term: that depends on the
    alphas only, not on the mixture being scored), in scoring_mode, without gradients.
    """

    def __init__(self, run: SearchRun, batches: int = 4, data_root: str | None = None, device: str = "auto"):
        from osnas.search.bilevel import make_loss_fn

        sc = load_supernet(run, batches, data_root, device)
        self.model, self.batches, self.device, data = sc.model, sc.val, sc.device, sc.data
        s = run_config(run).search
        self.loss_fn = make_loss_fn(s.alpha_loss, s.label_smooth, s.margin)
        self.domains, self.objective, self.alpha_loss = data.domains, s.objective, s.alpha_loss
        self.calls = 0

    def __call__(self, weights: List[torch.Tensor]) -> float:
        losses = self.per_batch(weights)
        return sum(losses) / len(losses)

    @torch.no_grad()
    def per_batch(self, weights: List[torch.Tensor]) -> List[float]:
        """The loss of every validation batch (their spread gives a score's standard error)."""
        w = [x.to(self.device) for x in weights]
        self.calls += 1
        with scoring_mode(self.model) as m:
            return [float(self.loss_fn(lambda x: m(x, w), b)) for b in self.batches]


def perturb_run(run: SearchRun, batches: int = 4, order: str = "fixed", data_root: str | None = None,
                device: str = "auto") -> PerturbResult:
    """perturb_select on one run's supernet, starting from its probabilities (relax.probs of
    its alphas: for gumbel runs softmax(alpha), without noise or temperature).

    Cost: P * (C + 1) loss evaluations (fixed order), each a forward pass of the supernet over
    the validation batches (N per source); at full size, a GPU job."""
    scorer = PerturbScorer(run, batches, data_root, device)
    return perturb_select(run.probs, scorer, order)


def select_perturb(run: SearchRun, batches: int = 4, order: str = "fixed", data_root: str | None = None,
                   device: str = "auto") -> Genotype:
    """perturb_select on one run: its choices, with `positions[p]["scores"]` (each candidate's
    removal score), the base loss and the step at which the position was decided."""
    res = perturb_run(run, batches, order, data_root, device)
    rnd = 8
    extra = [{"scores": {n: round(v, rnd) for n, v in zip(p.names, res.scores[i])},
              "base_loss": round(res.base[i], rnd), "decided": res.rank[i]}
             for i, p in enumerate(run.space.positions)]
    return _genotype([run], "perturb", res.chosen, run.probs, [1.0] * len(res.chosen), extra)
