"""The bilevel search of IN/BN placement in one supernet, over several source domains.

    min_alpha L_alpha(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha)

Every step, as in DARTS (Liu et al., ICLR 2019):
  1. an alpha step (architect.py) on a batch the weights do not train on: a source kept out of
     every weight step, kept-out identities, the source held out this step, or held-out images
     of the same identities (batches.py, `search.objective`);
  2. a weight step on the training batch of the other sources.
With `search.weight_step=sampled` (the default) the weight step trains one path drawn from the
alphas (supernet.py) instead of the whole mixture: a step then costs what a plain network's does,
and each candidate's weights learn to work alone, as the derived network uses them (GDAS, Dong &
Yang, CVPR 2019; SPOS, Guo et al., ECCV 2020). `mixed` trains the whole mixture; `uniform` draws
the path uniformly and takes no alpha step at all (single-path one-shot NAS): its answer comes
from asking the supernet (`osnas derive --select retrieval-pooled`).
With `search.order=single` (the reference search) the alphas follow the training loss itself.
Alphas are frozen for the first `search.warmup_epochs`, then step every `search.alpha_every`
weight steps; `search.entropy_weight` adds a growing entropy penalty to the alpha loss, and a
deployment budget (`search.cost_budget` on `search.cost_table`, budget.py) scales it when the
alphas' expected latency exceeds the budget. The run folder (osnas.rundir) gets
config.yaml, space.yaml, run.json, alphas.jsonl (every step), checkpoint.pth, final_alphas.json;
the session around the loop (osnas.session) handles resume, saves, Ctrl-C and NaN stops.
`osnas search` trains `search.runs` such supernets into one folder (supernets.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch

from osnas import distributed as dist
from osnas.config import Config, save_config
from osnas.data import DEFAULT_SYNTH_SOURCES, build_multisource, data_root, transforms_from_config
from osnas.errors import OsnasError
from osnas.losses import reid_loss
from osnas.models import relax
from osnas.models.osnet import WIDTHS
from osnas.models.space import SearchSpace, load_space
from osnas.models.supernet import Supernet
from osnas.rundir import (ALPHA_HISTORY, CHECKPOINT, FINAL_ALPHAS, RUN_JSON, SEARCH_RESUME_KEYS, SPACE)
from osnas.search import budget
from osnas.search.architect import ORDERS, Architect
from osnas.search.batches import OBJECTIVES, SearchBatches, resolve_objective
from osnas.session import TrainingSession
from osnas.training import batch_loader, build_optimizer, lr_factor, set_lr
from osnas.utils import atomic_write_text, environment, log, read_jsonl, write_json

LOSSES = ("id", "triplet", "both")
WEIGHT_STEPS = ("sampled", "mixed", "uniform")
PATH_STEPS = {"sampled": "alphas", "uniform": "uniform"}  # one path per step: how it is drawn
FROZEN_STEPS = ("uniform",)  # single-path one-shot: no alpha step, derive asks the supernet


@dataclass
class _Parts:
    """What one search holds while it runs: data, supernet, optimisers, losses, cost table."""

    data: SearchBatches
    model: Supernet
    wrapped: torch.nn.Module  # the supernet, DDP-wrapped under torchrun
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    architect: Architect
    loss_w: Callable
    entropy_w: list  # [weight]: the entropy term's weight, ramped up over the alpha epochs
    table: object  # the cost table, or None
    base_lr: list


def search(cfg: Config, run_dir: Path, resume: bool, ctx, pretrained: Optional[str] = None) -> Path:
    """Search one supernet with `cfg` into `run_dir` (resume: continue it); `pretrained`: a
    published torchreid OSNet checkpoint the shared weights start from (pretrained_supernet)."""
    s = cfg.search
    space = validate_search_config(cfg)
    table = budget.cost_table(s.cost_table, space, cfg.model.arch, cfg.data.height, cfg.data.width)
    budget.check_feasible(space, table, s.cost_budget)  # before any data is read
    with TrainingSession("search", run_dir, cfg.run, ctx, resume, checkpoint=CHECKPOINT, log_name=ALPHA_HISTORY,
                         log_cut=("step", "global_step"), resume_keys=SEARCH_RESUME_KEYS,
                         continue_cmd=f"osnas search --out {run_dir} --resume",
                         check=lambda ck: _check_same_search(ck, space, cfg, run_dir / CHECKPOINT)) as run:
        parts = _build(cfg, space, table, run, ctx, None if resume else pretrained)
        model, data = parts.model, parts.data
        state = {"model": model, "w_opt": parts.w_opt, "a_opt": parts.a_opt, "streams": data}
        meta = {"space": space.name, "space_sha256": space.sha256, "arch": model.arch, "shared": model.shared,
                "relaxation": model.relaxation, "positions": [p.name for p in model.positions],
                "sources": data.domains, "seed": run.seed}
        at = run.restore(state, {"epoch": 0, "step_in_epoch": 0, "global_step": 0},
                         write_start=lambda: _write_start(cfg, run_dir, model, data, run.seed, ctx, pretrained))
        at = _train(cfg, parts, run, ctx, at, state, meta)

    def finish():
        g = model.genotype(sources=data.domains, seed=run.seed, step=at["global_step"])
        write_json(run_dir / FINAL_ALPHAS, g.to_dict())
        if s.weight_step not in FROZEN_STEPS:
            log.info("final choices: " + ", ".join(f"{k}={v['choice']} ({max(v['probs'].values()):.2f})"
                                                    for k, v in g.positions.items()))
        log.info(f"done: {run_dir}")

    dist.on_main(finish, ctx)
    return run_dir


def _build(cfg: Config, space: SearchSpace, table, run, ctx, pretrained: Optional[str]) -> _Parts:
    """The search's data, supernet (from published weights when given), optimisers and losses."""
    s = cfg.search
    data = search_batches(cfg, run.seed, ctx.rank, ctx.world_size)
    model = search_supernet(cfg, space, data.num_classes)
    if pretrained:
        report = pretrained_supernet(model, pretrained)
        if ctx.is_main:
            log.info(f"supernet weights from {pretrained}: {len(report['loaded'])} tensors loaded "
                     f"({report['layout']} layout); other candidates start as initialised")
    model.to(run.device)
    if ctx.distributed and cfg.run.sync_bn:
        model.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.net)
    w_opt = build_optimizer(model.weight_parameters(), s.optimizer, s.lr, s.weight_decay, s.momentum)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=s.alpha_lr, betas=tuple(s.alpha_betas),
                             weight_decay=s.alpha_weight_decay)
    entropy_w = [0.0]
    loss_a = with_entropy(make_loss_fn(s.alpha_loss, s.label_smooth, s.margin), model, entropy_w)
    if table is not None:  # the alpha loss times max(1, E[cost] / budget) ** cost_weight
        loss_a = budget.with_cost(loss_a, model, table, s.cost_budget, s.cost_weight)
    architect = Architect(model, loss_a, a_opt, order=s.order, w_optimizer=w_opt, grad_clip=s.grad_clip,
                          reduce_fn=(lambda gs: dist.allreduce_mean(gs, ctx)) if ctx.distributed else None)
    return _Parts(data, model, dist.wrap(model, ctx), w_opt, a_opt, architect,
                  make_loss_fn("id" if s.alpha_loss == "triplet" else s.alpha_loss, s.label_smooth, s.margin),
                  entropy_w, table, [g["lr"] for g in w_opt.param_groups])


def pretrained_supernet(model: Supernet, path) -> dict:
    """Published ImageNet OSNet weights (torchreid's format) into the supernet, through the same
    importer as `osnas retrain --pretrained`: the shared convolutions, and the normalisation of
    every site the checkpoint has, come from the file; candidates it has no weights for keep
    their initial values (an IN starts as the identity affine: weight 1, bias 0). A checkpoint of
    another width or layout is a one-line error naming what differs."""
    from osnas.models import load_torchreid_weights

    return load_torchreid_weights(model.net, path, verbose=False, strict=False)


def _train(cfg: Config, p: _Parts, run, ctx, at: dict, state: dict, meta: dict) -> dict:
    """The search loop: epochs of steps, a checkpoint after each epoch; returns the counters."""
    s, model, data = cfg.search, p.model, p.data
    epoch, step_in_epoch, global_step = at["epoch"], at["step_in_epoch"], at["global_step"]
    frozen = s.weight_step in FROZEN_STEPS  # paths drawn uniformly, and no alpha step at all

    def needs_alpha_batch(ep: int, step: int) -> bool:  # only the bilevel alpha step reads one
        return alphas_step(s, ep, step) and s.order != "single"

    def counters():
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}

    def groups():  # what the DDP ranks must agree on at a checkpoint
        return dist.model_groups(model, model.arch_parameters())

    run.start_progress(s.epochs * s.steps_per_epoch, global_step)
    while epoch < s.epochs:
        model.tau = relax.gumbel_tau(epoch, s.tau_init, s.tau_decay_every, s.tau_factor, s.tau_min) \
            if model.relaxation == "gumbel" else 1.0
        p.entropy_w[0] = s.entropy_weight * min(1.0, max(0.0, (epoch - s.warmup_epochs + 1) /
                                                         max(1, s.epochs - s.warmup_epochs)))
        n = s.steps_per_epoch - step_in_epoch
        plan = data.plan_steps(global_step, n)  # [weight, alpha] per step; the streams move alike either way
        # an alpha batch is read only for steps that take a bilevel alpha step (not while the
        # alphas are frozen, between alpha_every steps, or ever with weight_step uniform)
        keys = [k for j, k in enumerate(plan) if j % 2 == 0 or needs_alpha_batch(epoch, global_step + j // 2)]
        batches = iter(batch_loader(data.dataset, keys, cfg.data.workers))
        for _ in range(n):
            wb = [t.to(run.device, non_blocking=True) for t in next(batches)]  # weight batch (x, pid, cam, dom)
            ab = [t.to(run.device, non_blocking=True) for t in next(batches)] \
                if needs_alpha_batch(epoch, global_step) else None  # alpha batch
            set_lr(p.w_opt, p.base_lr, lr_factor(epoch + step_in_epoch / s.steps_per_epoch, s.epochs, s.schedule))
            loss_w, loss_a, path = _step(cfg, p, run, ctx, wb, ab, alphas_step(s, epoch, global_step), global_step)
            step_in_epoch, global_step = step_in_epoch + 1, global_step + 1
            run.record(history_row(model, global_step - 1, epoch, loss_w, loss_a, p.table, path))
            run.tick(epoch=epoch, loss=loss_w, tau=model.tau)
            if global_step % cfg.run.log_every == 0 and ctx.is_main:
                log.info(f"epoch {epoch} step {global_step}/{s.epochs * s.steps_per_epoch} loss_w {loss_w:.4f}"
                         + (f" loss_a {loss_a:.4f}" if loss_a is not None else "") + " | "
                         + ("path " if frozen else "")  # the alphas never move: show the path
                         + " ".join(f"{q.name}:{q.names[c] if frozen else c}" for q, c in
                                    zip(model.positions, path if frozen else model.choices().values())))
            if run.stop_requested:
                del batches  # stops the loader's workers
                data.rewind(global_step)  # the streams as they stand at this step, not at the epoch's end
                run.stop(state, counters(), meta, groups(), at=f"step {global_step}")
        del batches
        epoch, step_in_epoch = epoch + 1, 0
        if epoch % cfg.run.checkpoint_every == 0 or epoch == s.epochs:
            run.save(state, counters(), meta, groups())
    return counters()


def alphas_step(s, epoch: int, step: int) -> bool:
    """Does this step update the alphas? Not while they are frozen (warm-up, or never: uniform)."""
    return s.weight_step not in FROZEN_STEPS and epoch >= s.warmup_epochs and step % s.alpha_every == 0


def _step(cfg: Config, p: _Parts, run, ctx, wb: list, ab: Optional[list], alphas_on: bool, global_step: int):
    """One search step: the alpha step on `ab` (when given), then the weight step on `wb`.
    Returns (weight loss, alpha loss or None, the path trained or None)."""
    s, model = cfg.search, p.model
    model.train()
    # 1. alpha step, judged on the alpha batch (weights and BN statistics left as they were)
    loss_a = p.architect.step(wb, ab) if ab is not None else None
    # 2. weight step on the training batch
    p.w_opt.zero_grad(set_to_none=True)
    p.a_opt.zero_grad(set_to_none=True)
    # sampled / uniform: one candidate per position, drawn from the alphas or not (the same on
    # every DDP rank and after a resume: the generator is seeded by the seed and step)
    path = model.sample_path(step_generator(run.seed, global_step), PATH_STEPS[s.weight_step]) \
        if s.weight_step in PATH_STEPS else None
    loss = p.loss_w(p.wrapped, wb, path)
    loss_w = run.check(loss, f"search step {global_step}")
    single = alphas_on and s.order == "single"  # single-level: alphas follow the training loss
    if single and p.entropy_w[0] > 0:
        loss = loss + p.entropy_w[0] * mean_entropy(model)
    loss.backward()
    if s.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.weight_parameters(), s.grad_clip)
    p.w_opt.step()
    if single:
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.arch_parameters(), s.grad_clip)
        p.a_opt.step()
        loss_a = loss_w
    if ctx.distributed and cfg.run.ddp_check:
        dist.check_consistent(dist.model_groups(model, model.arch_parameters(), buffers=False), ctx,
                              f"search step {global_step}")
    return loss_w, loss_a, path


# ----------------------------------------------------------------------------- configuration
def search_batches(cfg: Config, seed: int, rank: int = 0, world_size: int = 1, train: bool = True) -> SearchBatches:
    """The search's data, as a run's config describes it (derive re-reads it with train=False:
    the same batches, through the evaluation transform)."""
    d, s = cfg.data, cfg.search
    union = build_multisource(d.sources, data_root(d.root), skip_unparsable=d.skip_unparsable,
                              combine_all=d.combine_all)
    return SearchBatches(union, s.objective, d.batch_size, d.num_instances, transforms_from_config(d, train=train),
                         seed, s.val_fraction, rank, world_size, unseen=s.unseen_domain)


def search_supernet(cfg: Config, space: SearchSpace, num_classes: int) -> Supernet:
    """The supernet a run's config describes (weights and alphas freshly initialised)."""
    s, m = cfg.search, cfg.model
    return Supernet(space, arch=m.arch, num_classes=num_classes, head=m.head, feature_dim=m.feature_dim,
                    last_stride=m.last_stride, shared=s.shared, relaxation=s.relaxation, alpha_init=s.alpha_init)


def validate_search_config(cfg: Config) -> SearchSpace:
    """Fail on bad choices before any data is read or generated; returns the search space."""
    s = cfg.search
    for key, val, valid in (("search.objective", s.objective, OBJECTIVES), ("search.order", s.order, ORDERS),
                            ("search.alpha_loss", s.alpha_loss, LOSSES), ("model.arch", cfg.model.arch, WIDTHS),
                            ("search.relaxation", s.relaxation, relax.RELAXATIONS + ("",)),
                            ("search.weight_step", s.weight_step, WEIGHT_STEPS)):
        if val not in valid:
            raise OsnasError(f"{key}={val!r}: expected one of {', '.join(v for v in valid if v)}")
    if s.runs < 1:
        raise OsnasError(f"search.runs must be >= 1 (supernets per search), got {s.runs}")
    if s.epochs < 1 or s.steps_per_epoch < 1:
        raise OsnasError(f"search.epochs and search.steps_per_epoch must be >= 1, got {s.epochs}, {s.steps_per_epoch}")
    if s.alpha_every < 1:
        raise OsnasError(f"search.alpha_every must be >= 1, got {s.alpha_every}")
    if s.entropy_weight < 0:
        raise OsnasError(f"search.entropy_weight must be >= 0, got {s.entropy_weight}")
    budget.check_budget(s.cost_budget)
    if s.cost_weight < 0:
        raise OsnasError(f"search.cost_weight must be >= 0, got {s.cost_weight}")
    if s.cost_budget > 0 and not str(s.cost_table).strip():
        raise OsnasError(f"search.cost_budget={s.cost_budget:g} needs search.cost_table: a cost table file from "
                         f"`osnas profile`, or proxy")
    if str(s.cost_table).strip() and s.order == "single":
        raise OsnasError("search.cost_table works with the bilevel search (search.order first or second); the "
                         "single-level search has no separate alpha loss to weigh against the cost")
    if s.weight_step == "sampled" and s.order == "single":
        raise OsnasError("search.weight_step=sampled needs a bilevel search (search.order first or second): the "
                         "single-level search steps the alphas through the weight step's mixture")
    if s.weight_step in FROZEN_STEPS and s.cost_budget > 0:
        raise OsnasError(f"search.cost_budget={s.cost_budget:g} acts on the alphas, and "
                         f"search.weight_step={s.weight_step} never steps them: search with weight_step sampled or "
                         "mixed, or derive within a budget (osnas derive --cost-budget)")
    objective = resolve_objective(s.objective, len(cfg.data.sources) or len(DEFAULT_SYNTH_SOURCES))
    if objective in ("unseen", "identities") and s.alpha_loss != "triplet":
        raise OsnasError(f"search.objective={objective} judges alphas on identities the classifier never saw: it "
                         f"needs search.alpha_loss=triplet, got {s.alpha_loss}")
    return load_space(s.space)


def _check_same_search(ck: dict, space: SearchSpace, cfg: Config, path: Path) -> None:
    """A checkpoint resumes only the search it came from (same space, width, sharing)."""
    for key, mine in (("space_sha256", space.sha256), ("arch", cfg.model.arch), ("shared", cfg.search.shared)):
        if ck.get(key) != mine:
            raise OsnasError(f"{path}: checkpoint does not match the run's config: {key} is {ck.get(key)!r} in the "
                             f"checkpoint, {mine!r} now")


def make_loss_fn(kind: str, label_smooth: float, margin: float):
    """`loss_fn(model, batch) -> loss`: identity (label-smoothed), batch-hard triplet, or both."""
    if kind not in LOSSES:
        raise OsnasError(f"search loss {kind!r}: expected one of {', '.join(LOSSES)}")
    idw = 1.0 if kind in ("id", "both") else 0.0
    trw = 1.0 if kind in ("triplet", "both") else 0.0

    def loss_fn(model, batch, path=None):  # path: one candidate per position (a single-path step)
        x, pids = batch[0], batch[1]
        logits, feats = model(x) if path is None else model(x, path=path)
        loss, _ = reid_loss(logits, feats, pids, label_smooth=label_smooth, id_weight=idw, triplet_weight=trw,
                            margin=margin)
        return loss

    return loss_fn


def mean_entropy(model: Supernet) -> torch.Tensor:
    """The mean over positions of the entropy of their probabilities (differentiable in alpha)."""
    ent = [-(p * p.clamp_min(1e-12).log()).sum()
           for p in (relax.probs(a, model.relaxation) for a in model.arch_parameters())]
    return torch.stack(ent).mean()


def with_entropy(loss_fn, model: Supernet, weight: list):
    """The alpha loss plus weight[0] x the mean entropy of the positions' probabilities: a
    positive weight pushes every position towards one candidate (an annealed search), so the
    final argmax is decided by the data rather than by noise around a uniform mixture."""
    def loss(m, batch):
        value = loss_fn(m, batch)
        return value + weight[0] * mean_entropy(model) if weight[0] > 0 else value

    return loss


# ----------------------------------------------------------------------------- records
def step_generator(seed: int, step: int) -> torch.Generator:
    """The random source of one step's sampled path: a function of the seed and the step only."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def history_row(model: Supernet, step: int, epoch: int, loss_w: float, loss_a: Optional[float],
                table=None, path: Optional[List[int]] = None) -> dict:
    """One row of alphas.jsonl: alphas, probabilities and entropy of every position, the losses,
    with a cost table the expected relative cost of the alphas, and with a sampled weight step
    the path it trained."""
    probs = model.probs()
    extra = {"cost": round(budget.expected_cost(model, table), 6)} if table is not None else {}
    if path is not None:
        extra["path"] = {p.name: p.names[i] for p, i in zip(model.positions, path)}
    return {
        "step": step, "epoch": epoch, "tau": model.tau, "loss_w": round(loss_w, 6),
        "loss_a": None if loss_a is None else round(loss_a, 6),
        "alphas": {p.name: [round(float(v), 6) for v in a.detach()] for p, a in zip(model.positions, model.alphas)},
        "probs": {p.name: {c: round(float(v), 6) for c, v in zip(p.names, pr)} for p, pr in zip(model.positions, probs)},
        "entropy": {p.name: round(relax.entropy(pr), 6) for p, pr in zip(model.positions, probs)},
        **extra,
    }


def read_history(run_dir: Path) -> List[dict]:
    """The rows of a search run's alphas.jsonl ([] before the first step)."""
    return read_jsonl(Path(run_dir) / ALPHA_HISTORY, "alpha history", missing_ok=True)


def _write_start(cfg: Config, run_dir: Path, model: Supernet, data: SearchBatches, seed: int, ctx,
                 pretrained: Optional[str] = None) -> None:
    s = cfg.search
    save_config(cfg, run_dir)
    atomic_write_text(run_dir / SPACE, model.space.text)
    write_json(run_dir / RUN_JSON, {"stage": "search", "sources": data.domains, "space": model.space.name,
                                    "space_sha256": model.space.sha256, "seed": seed, "arch": cfg.model.arch,
                                    "objective": data.objective, "order": s.order, "relaxation": model.relaxation,
                                    "shared": s.shared, "alpha_every": s.alpha_every, "weight_step": s.weight_step,
                                    "entropy_weight": s.entropy_weight, "cost_table": s.cost_table,
                                    "cost_budget": s.cost_budget,
                                    "unseen_domain": data.domains[data.unseen] if data.unseen is not None else None,
                                    "pretrained": str(pretrained) if pretrained else None,
                                    "world_size": ctx.world_size, "environment": environment()})
    log.info(f"search {model.space.name} ({model.space.size()} architectures, {len(model.positions)} positions) "
             f"on {', '.join(data.domains)}: {data.objective}, {s.order}-order, {model.relaxation}; "
             f"{len(data.items)} images, {data.num_classes} identities -> {run_dir}"
             + (f" ({ctx.world_size} processes, data.batch_size per process)" if ctx.distributed else ""))
