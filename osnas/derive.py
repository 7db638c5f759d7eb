"""`osnas derive`: freeze the answer of one or more search runs into a genotype file.

    osnas derive --run RUN [RUN ...] [--select argmax|perturb|consensus] [--out FILE]

Selection methods (SELECTORS; the default is argmax for one run, consensus for several):

argmax     per position the candidate with the largest probability of the run's final alphas.
perturb    perturbation-based selection (Wang et al., "Rethinking Architecture Selection in
           Differentiable NAS", ICLR 2021): the supernet of the run (weights and alphas of
           its checkpoint) is scored on the run's own alpha-step data; per position, each
           candidate is removed from the mixture in turn and the candidate whose removal
           raises the validation loss most is kept (see `perturb_select`, `PerturbScorer`).
           Positions are decided one at a time, each fixed to one-hot before the next is
           scored. Unlike the paper, the supernet is not fine-tuned between decisions: the
           weights stay as searched, which keeps derive cheap (no training data pass) and
           deterministic. With several runs every run is perturbed alone and the runs vote.
consensus  per position the argmax of the runs' mean probabilities.

Every run is read through its own copy of the space it searched (its hash must match the
checkpoint's), and several runs must have searched the same space. The file records, besides
the choice, probabilities and entropy of every position: `select` (the method), `agreement`
(per position, the fraction of the runs whose own choice is the chosen candidate; 1.0 for
one run), `runs` (the run folders), and for perturb the score of every candidate, so every
later result can be traced back to how its architecture was chosen.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from osnas.errors import OsnasError, first_line
from osnas.models import relax
from osnas.models.genotype import Genotype, genotype_from_probs
from osnas.models.space import SearchSpace, load_space
from osnas.rundir import CHECKPOINT, CONFIG, GENOTYPE, RUN_JSON, SPACE
from osnas.utils import load_checkpoint, read_json

PERTURB_ORDERS = ("fixed", "greedy")


# ----------------------------------------------------------------------------- reading runs
@dataclass
class SearchRun:
    """What derive reads of one search run: its checkpoint, its space and final probabilities."""

    path: Path
    ck_path: Path
    ck: dict
    space: SearchSpace
    probs: List[torch.Tensor]  # per position, the deterministic probabilities of the alphas (relax.probs)

    def argmax(self) -> List[int]:
        return [int(p.argmax()) for p in self.probs]


def load_run(run: str | Path, checkpoint: str | Path | None = None) -> SearchRun:
    """A search run's checkpoint, space and probabilities, checked to belong together.

    The run's own space.yaml (a copy of the space searched) is used, and its hash must match
    the checkpoint's: a genotype never silently comes from a different space."""
    run = Path(run)
    if not run.is_dir():
        raise OsnasError(f"{run}: search run folder not found")
    info = read_json(run / RUN_JSON, "run description") if (run / RUN_JSON).is_file() else None
    if isinstance(info, dict) and info.get("stage") not in (None, "search"):
        raise OsnasError(f"{run}: not a search run ({RUN_JSON} says stage {info.get('stage')!r})")
    ck_path = Path(checkpoint) if checkpoint else run / CHECKPOINT
    ck = load_checkpoint(ck_path, "search checkpoint")
    for key in ("model", "space_sha256", "positions", "relaxation"):
        if key not in ck:
            raise OsnasError(f"{ck_path}: not a search checkpoint (missing {key!r})")
    space_file = run / SPACE
    if not space_file.is_file():
        raise OsnasError(f"{space_file}: the run's copy of its search space is missing")
    space = load_space(space_file)
    if space.sha256 != ck["space_sha256"]:
        raise OsnasError(f"{space_file}: search space hash {space.sha256[:12]} does not match the checkpoint's "
                         f"{ck['space_sha256'][:12]}; the space file was changed after the search")
    names = [p.name for p in space.positions]
    if names != list(ck["positions"]):
        raise OsnasError(f"{ck_path}: positions {ck['positions']} do not fit space {space.name} ({names})")
    alphas = [ck["model"].get(f"alphas.{i}") for i in range(len(names))]
    if any(a is None for a in alphas):
        raise OsnasError(f"{ck_path}: alphas missing from the checkpoint")
    probs = []
    for p, a in zip(space.positions, alphas):
        pr = relax.probs(a.detach().float().cpu(), ck["relaxation"])
        if pr.numel() != len(p.candidates) or not torch.isfinite(pr).all():
            raise OsnasError(f"{ck_path}: alphas of position {p.name} do not fit its {len(p.candidates)} candidates")
        probs.append(pr)
    return SearchRun(run, ck_path, ck, space, probs)


def _check_same_space(runs: Sequence[SearchRun]) -> None:
    hashes = {r.space.sha256 for r in runs}
    if len(hashes) > 1:
        raise OsnasError("runs searched different spaces: " + ", ".join(
            f"{r.path} ({r.space.name} {r.space.sha256[:12]})" for r in runs))


# ----------------------------------------------------------------------------- genotype assembly
def _genotype(runs: Sequence[SearchRun], select: str, chosen: List[int], probs: List[torch.Tensor],
              agreement: List[float], extra: Optional[List[dict]] = None) -> Genotype:
    """The genotype of `chosen` (candidate index per position) with its provenance.

    probs: per position the probabilities recorded (the run's, or the mean of the runs');
    extra: per position, more keys for `positions[p]` (scores, votes)."""
    space = runs[0].space
    ck0 = runs[0].ck
    one = len(runs) == 1
    archs = {r.ck.get("arch", "") for r in runs}
    sources: list = []
    for r in runs:
        sources += [s for s in r.ck.get("sources", []) if s not in sources]
    return genotype_from_probs(
        space, probs, arch=archs.pop() if len(archs) == 1 else "", shared=all(r.ck.get("shared", True) for r in runs),
        chosen=chosen, extra=extra, name=f"searched-{space.name}" + ("" if select == "argmax" else f"-{select}"),
        sources=sources, seed=ck0.get("seed") if one else None, step=ck0.get("global_step") if one else None,
        select=select, agreement={p.name: round(float(a), 6) for p, a in zip(space.positions, agreement)},
        runs=[str(r.path) for r in runs])


def _agreement(per_run: List[List[int]], chosen: List[int]) -> List[float]:
    """Per position, the fraction of runs whose own choice is the chosen candidate."""
    return [sum(rc[i] == c for rc in per_run) / len(per_run) for i, c in enumerate(chosen)]


def _mean_probs(runs: Sequence[SearchRun]) -> List[torch.Tensor]:
    return [torch.stack([r.probs[i] for r in runs]).mean(0) for i in range(len(runs[0].probs))]


def _best(keys: Sequence[tuple]) -> int:
    """Index of the largest key tuple; on a full tie the earliest (the space's candidate order)."""
    best = 0
    for j, k in enumerate(keys):
        if k > keys[best]:
            best = j
    return best


# ----------------------------------------------------------------------------- argmax / consensus
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


# ----------------------------------------------------------------------------- perturb
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
    alpha loss). The validation set is the run's own alpha-step data: the alpha batches of the
    first steps of its batch plan (SearchBatches.plan_steps from step 0, the same seed), N per
    source the alpha step draws from: lodo N x (number of sources) steps, i.e. N batches of
    each source's alpha stream; heldout N steps, each a PK sub-batch of every source's
    held-out images; unseen N batches of the unseen source. Images go through the evaluation
    transform (no augmentation). The loss is the mean over these batches of the run's
    alpha loss (make_loss_fn(search.alpha_loss), without the entropy term: that depends on the
    alphas only, not on the mixture being scored), in scoring_mode, without gradients.
    """

    def __init__(self, run: SearchRun, batches: int = 4, data_root: str | None = None, device: str = "auto"):
        from osnas.search.bilevel import make_loss_fn, search_batches, search_supernet
        from osnas.training import batch_loader
        from osnas.utils import resolve_device

        if batches < 1:
            raise OsnasError(f"--batches must be >= 1, got {batches}")
        cfg = run_config(run, "perturb needs the run's data settings")
        d, s = cfg.data, cfg.search
        if data_root:
            d.root = str(data_root)
        data = search_batches(cfg, cfg.run.seed, train=False)
        self.device = resolve_device(device)
        ck = run.ck
        cfg.model.arch, s.shared, s.relaxation = ck.get("arch") or cfg.model.arch, ck.get("shared", s.shared), \
            ck["relaxation"]
        model = search_supernet(cfg, run.space, data.num_classes)
        try:
            model.load_state_dict(ck["model"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise OsnasError(f"{run.ck_path}: supernet weights do not fit the run's {CONFIG} ({first_line(e)})") from None
        self.model = model.to(self.device).eval()
        steps = batches * len(data.domains) if s.objective == "lodo" else batches
        keys = data.plan_steps(0, steps)[1::2]  # [weight, alpha] per step: the alpha batches
        self.batches = [[t.to(self.device) for t in b] for b in batch_loader(data.dataset, keys, 0)]
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


def select_perturb(runs: Sequence[SearchRun], batches: int = 4, order: str = "fixed", data_root: str | None = None,
                   device: str = "auto", **_) -> Genotype:
    """perturb_select per run; one run: its choices; several: a majority vote per position.

    `positions[p]["scores"]` = the candidates' scores (the run's, or their mean over runs),
    plus the base loss and decision rank (one run) or the votes (several). Vote ties go to
    the larger mean probability of the runs, then the earlier candidate. `agreement` = the
    fraction of runs whose own perturb choice is the chosen candidate."""
    results = [perturb_run(r, batches, order, data_root, device) for r in runs]
    per_run = [res.chosen for res in results]
    rnd = 8
    if len(runs) == 1:
        res, r = results[0], runs[0]
        extra = [{"scores": {n: round(v, rnd) for n, v in zip(p.names, res.scores[i])},
                  "base_loss": round(res.base[i], rnd), "decided": res.rank[i]}
                 for i, p in enumerate(r.space.positions)]
        return _genotype(runs, "perturb", res.chosen, r.probs, [1.0] * len(res.chosen), extra)
    mean = _mean_probs(runs)
    chosen, extra = [], []
    for i, p in enumerate(runs[0].space.positions):
        k = len(p.candidates)
        votes = [sum(rc[i] == j for rc in per_run) for j in range(k)]
        chosen.append(_best([(votes[j], float(mean[i][j])) for j in range(k)]))
        mscore = [sum(res.scores[i][j] for res in results) / len(results) for j in range(k)]
        extra.append({"scores": {n: round(v, rnd) for n, v in zip(p.names, mscore)},
                      "votes": dict(zip(p.names, votes)),
                      "run_scores": [{n: round(v, rnd) for n, v in zip(p.names, res.scores[i])} for res in results]})
    return _genotype(runs, "perturb", chosen, mean, _agreement(per_run, chosen), extra)


SELECTORS: Dict[str, Callable[..., Genotype]] = {
    "argmax": select_argmax,
    "perturb": select_perturb,
    "consensus": select_consensus,
}


# ----------------------------------------------------------------------------- entry points
def _as_list(run) -> List:
    if isinstance(run, (str, Path)):
        return [run]
    return list(run)


def derive(run, select: str | None = None, checkpoint=None, batches: int = 4, order: str = "fixed",
           data_root: str | None = None, device: str = "auto", cost_table: str | None = None,
           cost_budget: float | None = None, measure: bool = True) -> Genotype:
    """The genotype of one run or several (`run`: a folder or a list of folders) by `select`
    (a key of SELECTORS; None = argmax for one run, consensus for several).

    With a cost table (`cost_table`, else the first run's search.cost_table) the genotype
    records its deployment cost, and a budget (`cost_budget`, else the run's
    search.cost_budget; 0 = none) is a hard limit: see `apply_budget`."""
    paths = _as_list(run)
    if not paths:
        raise OsnasError("derive needs at least one search run (--run)")
    select = select or ("argmax" if len(paths) == 1 else "consensus")
    if select not in SELECTORS:
        raise OsnasError(f"unknown selection method {select!r}; valid: {', '.join(SELECTORS)}")
    if order not in PERTURB_ORDERS:
        raise OsnasError(f"unknown perturb order {order!r}; valid: {', '.join(PERTURB_ORDERS)}")
    if checkpoint and len(paths) > 1:
        raise OsnasError("--checkpoint names one checkpoint: use it with a single --run")
    runs = [load_run(p, checkpoint) for p in paths]
    _check_same_space(runs)
    g = SELECTORS[select](runs, batches=batches, order=order, data_root=data_root, device=device)
    return apply_budget(g, runs, cost_table, cost_budget, measure)


def run_config(run: SearchRun, needed_for: str = ""):
    """The run's config.yaml as a Config; missing: an OsnasError saying what needs it, or the
    defaults when nothing does (`needed_for` empty)."""
    from osnas.config import build_config
    from osnas.utils import load_yaml

    cfg_path = run.path / CONFIG
    if cfg_path.is_file():
        return build_config(base=load_yaml(cfg_path, "run config"))
    if needed_for:
        raise OsnasError(f"{cfg_path}: the run's config is missing ({needed_for})")
    return build_config()


def _run_cost_settings(run: SearchRun) -> tuple:
    """(cost_table, cost_budget, height, width, arch) from a run's config.yaml (defaults when absent)."""
    cfg = run_config(run)
    return (cfg.search.cost_table, cfg.search.cost_budget, cfg.data.height, cfg.data.width,
            run.ck.get("arch") or cfg.model.arch)


def apply_budget(g: Genotype, runs: Sequence[SearchRun], cost_table: str | None = None,
                 cost_budget: float | None = None, measure: bool = True) -> Genotype:
    """The genotype within the deployment budget, with its `cost` record.

    Over budget, candidates are switched greedily where the least preference (the recorded
    probabilities) is lost per unit of relative cost saved (osnas.search.budget.fit_budget);
    the switches are recorded in `cost.switches`. With a measured table (not the proxy) and
    `measure`, the derived network and the all-BN network of its width are timed on the
    table's backend, input size, batch and threads: `cost.latency_ms` and `cost.measured_relative`."""
    from dataclasses import replace

    from osnas.search import budget as B

    spec, run_budget, height, width, arch = _run_cost_settings(runs[0])
    spec = spec if cost_table is None else cost_table
    limit = B.check_budget(run_budget if cost_budget is None else cost_budget, "--cost-budget")
    space = runs[0].space
    table = B.cost_table(spec, space, arch, height, width)
    if table is None:
        if limit > 0:
            raise OsnasError(f"cost budget {limit:g} needs a cost table (--cost-table FILE|proxy); the run has none")
        return g
    chosen = [p.names.index(g.positions[p.name]["choice"]) for p in space.positions]
    pref = [torch.tensor([g.positions[p.name]["probs"][c] for c in p.names]) for p in space.positions]
    switches: list = []
    if limit > 0:
        chosen, switches = B.fit_budget(space, chosen, pref, table, limit)
    choices = {p.name: p.names[c] for p, c in zip(space.positions, chosen)}
    positions = {k: dict(v, choice=choices[k]) for k, v in g.positions.items()}
    measured = B.measure_cost(space.plan_for(choices), table) if measure and table.method == "measured" else None
    return replace(g, plan=space.plan_for(choices), positions=positions,
                   cost=B.cost_record(table, choices, limit, measured, switches, source=str(spec)))


def derive_from_run(run: str | Path, checkpoint: str | Path | None = None) -> Genotype:
    """The argmax genotype of a search run, from its checkpoint's alphas."""
    return derive(run, "argmax", checkpoint)


def run_derive(run, out=None, checkpoint=None, select: str | None = None, batches: int = 4, order: str = "fixed",
               data_root: str | None = None, device: str = "auto", cost_table: str | None = None,
               cost_budget: float | None = None, measure: bool = True) -> Path:
    """Derive and write the genotype file; a summary table on stderr, its path on stdout.

    `run`: one search run folder or a list of them; `out` defaults to RUN/genotype.yaml for
    one run and is required for several."""
    paths = _as_list(run)
    if out is None and len(paths) > 1:
        raise OsnasError(f"several runs ({', '.join(map(str, paths))}): give the genotype file to write with --out")
    g = derive(paths, select, checkpoint, batches, order, data_root, device, cost_table, cost_budget, measure)
    path = Path(out) if out else Path(paths[0]) / GENOTYPE
    g.save(path)
    print_summary(g, file=sys.stderr)
    print(str(path))
    return path


def print_summary(g: Genotype, file=sys.stderr) -> None:
    """Position, choice, its probability (and perturb score), agreement; then the IN sites."""
    runs = ", ".join(g.runs)
    print(f"genotype of {runs} (select {g.select}; {g.space}" + (f", step {g.step}" if g.step is not None else "")
          + f", sources {','.join(g.sources)}):", file=file)
    perturb = any("scores" in v for v in g.positions.values())
    width = max([len(k) for k in g.positions] + [len("position")])
    cw = max([len(v["choice"]) for v in g.positions.values()] + [len("choice")])
    print(f"  {'position':<{width}}  {'choice':<{cw}}  {'prob':>6}" + (f"  {'drop':>10}" if perturb else "")
          + f"  {'agree':>5}  {'H':>5}", file=file)
    for k, v in g.positions.items():
        c = v["choice"]
        line = f"  {k:<{width}}  {c:<{cw}}  {v['probs'][c]:>6.3f}"
        if perturb:
            line += f"  {v['scores'][c]:>+10.5f}"
        line += f"  {g.agreement.get(k, 1.0):>5.2f}  {v['entropy']:>5.3f}"
        print(line, file=file)
    print(f"IN at: {', '.join(g.in_sites()) or 'nowhere'}", file=file)
    c = g.cost
    if c:
        line = (f"cost ({c['backend']}, {c['method']}): predicted {c['relative']:.3f}x the all-BN network "
                f"({c['predicted_ms']:.3f} ms)")
        if "latency_ms" in c:
            line += f"; measured {c['latency_ms']:.3f} ms = {c['measured_relative']:.3f}x"
        if c.get("budget"):
            line += f"; budget {c['budget']:g}x"
        print(line, file=file)
        for sw in c.get("switches", []):
            print(f"  over budget: {sw['position']} {sw['from']} -> {sw['to']} (saves {sw['saved']:.4f})", file=file)
