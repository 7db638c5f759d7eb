"""`osnas search`: the bilevel search of IN/BN placement over several source domains.

    min_alpha L_alpha(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha)

Every step, as in DARTS (Liu et al., ICLR 2019):
  1. an alpha step (architect.py) on a batch the weights do not train on this step: held-out
     images of the same identities, or the held-out source domain (batches.py);
  2. a weight step on the training batch of the other sources.
With `search.order=single` (the reference search) the alphas follow the training loss itself.
With `search.weight_step=sampled` the weight step trains one path drawn from the alphas
(supernet.py) instead of the whole mixture: a step then costs what a plain network's does.
With `search.weight_step=uniform` the path is drawn uniformly and no alpha step is taken
(single-path one-shot NAS, Guo et al., ECCV 2020): the run trains a supernet whose subnets
all learn alike, to be asked afterwards which subnet is best (`osnas derive --select
retrieval`); its alphas never move, so there is nothing for argmax or consensus to read.
`search.weight_step=sparse` is the same with paths whose number of IN positions is drawn
uniformly (supernet.py `sample_path`), so the few-IN subnets derive starts from are trained too.
Alphas are frozen for the first `search.warmup_epochs`, then step every `search.alpha_every`
weight steps; `search.entropy_weight` adds a growing entropy penalty to the alpha loss, and a
deployment budget (`search.cost_budget` on `search.cost_table`, budget.py) scales it when the
alphas' expected latency exceeds the budget. The run folder (osnas.rundir) gets
config.yaml, space.yaml, run.json, alphas.jsonl (every step), checkpoint.pth, final_alphas.json;
the session around the loop (osnas.session) handles resume, saves, Ctrl-C and NaN stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from osnas import distributed as dist
from osnas.config import Config, save_config
from osnas.data import build_multisource, data_root, transforms_from_config
from osnas.errors import OsnasError
from osnas.losses import reid_loss
from osnas.models import relax
from osnas.models.osnet import WIDTHS
from osnas.models.space import SearchSpace, load_space
from osnas.models.supernet import Supernet
from osnas.rundir import (ALPHA_HISTORY, CHECKPOINT, FINAL_ALPHAS, RUN_JSON, SEARCH_RESUME_KEYS, SPACE)
from osnas.search import budget
from osnas.search.architect import ORDERS, Architect
from osnas.search.batches import OBJECTIVES, SearchBatches
from osnas.session import TrainingSession, resolve_run_config
from osnas.training import batch_loader, build_optimizer, lr_factor, set_lr
from osnas.utils import atomic_write_text, environment, log, read_jsonl, write_json

LOSSES = ("id", "triplet", "both")
WEIGHT_STEPS = ("mixed", "sampled", "uniform", "sparse")
PATH_STEPS = {"sampled": "alphas", "uniform": "uniform", "sparse": "sparse"}  # one path per step: how it is drawn
FROZEN_STEPS = ("uniform", "sparse")  # single-path one-shot: no alpha step, derive asks the supernet


def run_search(sources=None, data_root=None, space=None, config_file=None, overrides=None, out=None,
               resume=False, cfg: Optional[Config] = None) -> Path:
    """Run (or resume) a search; returns the run folder."""
    if cfg is None:
        cfg, run_dir = resolve_run_config(config_file, overrides, out, resume, sources, data_root, prefix="search")
        if space:
            cfg.search.space = str(space)
    else:
        run_dir = Path(out)
    with dist.session(cfg.run.device) as ctx:
        return search(cfg, run_dir, resume, ctx)


def search(cfg: Config, run_dir: Path, resume: bool, ctx) -> Path:
    s, d = cfg.search, cfg.data
    space = validate_search_config(cfg)
    table = budget.cost_table(s.cost_table, space, cfg.model.arch, d.height, d.width)  # None: no cost term
    with TrainingSession("search", run_dir, cfg.run, ctx, resume, checkpoint=CHECKPOINT, log_name=ALPHA_HISTORY,
                         log_cut=("step", "global_step"), resume_keys=SEARCH_RESUME_KEYS,
                         continue_cmd=f"osnas search --out {run_dir} --resume",
                         check=lambda ck: _check_same_search(ck, space, cfg, run_dir / CHECKPOINT)) as run:
        data = search_batches(cfg, run.seed, ctx.rank, ctx.world_size)
        model = search_supernet(cfg, space, data.num_classes).to(run.device)
        if ctx.distributed and cfg.run.sync_bn:
            model.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.net)
        w_opt = build_optimizer(model.weight_parameters(), s.optimizer, s.lr, s.weight_decay, s.momentum)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=s.alpha_lr, betas=tuple(s.alpha_betas),
                                 weight_decay=s.alpha_weight_decay)
        loss_w_fn = make_loss_fn("id" if s.alpha_loss == "triplet" else s.alpha_loss, s.label_smooth, s.margin)
        entropy_w = [0.0]  # the entropy term's weight, ramped up over the alpha epochs
        loss_a_fn = with_entropy(make_loss_fn(s.alpha_loss, s.label_smooth, s.margin), model, entropy_w)
        if table is not None:  # the alpha loss times max(1, E[cost] / budget) ** cost_weight
            loss_a_fn = budget.with_cost(loss_a_fn, model, table, s.cost_budget, s.cost_weight)
        wrapped = dist.wrap(model, ctx)  # DDP averages weight (and alpha) gradients of the weight step
        architect = Architect(model, loss_a_fn, a_opt, order=s.order, w_optimizer=w_opt, grad_clip=s.grad_clip,
                              reduce_fn=(lambda gs: dist.allreduce_mean(gs, ctx)) if ctx.distributed else None)
        base_lr = [g["lr"] for g in w_opt.param_groups]  # before a resumed optimiser state overwrites them
        parts = {"model": model, "w_opt": w_opt, "a_opt": a_opt, "streams": data}
        meta = {"space": space.name, "space_sha256": space.sha256, "arch": model.arch, "shared": model.shared,
                "relaxation": model.relaxation, "positions": [p.name for p in model.positions],
                "sources": data.domains, "seed": run.seed}
        at = run.restore(parts, {"epoch": 0, "step_in_epoch": 0, "global_step": 0},
                         write_start=lambda: _write_start(cfg, run_dir, model, data, run.seed, ctx))
        epoch, step_in_epoch, global_step = at["epoch"], at["step_in_epoch"], at["global_step"]

        def counters():
            return {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}

        def groups():  # what the DDP ranks must agree on at a checkpoint
            return dist.model_groups(model, model.arch_parameters())

        total_steps = s.epochs * s.steps_per_epoch
        one_path = s.weight_step in PATH_STEPS
        frozen = s.weight_step in FROZEN_STEPS  # paths drawn uniformly (or sparse), and no alpha step at all

        def alphas_step(ep: int, step: int) -> bool:  # does this step update the alphas?
            return not frozen and ep >= s.warmup_epochs and step % s.alpha_every == 0

        def needs_alpha_batch(ep: int, step: int) -> bool:  # only the bilevel alpha step reads one
            return alphas_step(ep, step) and s.order != "single"

        run.start_progress(total_steps, global_step)
        while epoch < s.epochs:
            model.tau = relax.gumbel_tau(epoch, s.tau_init, s.tau_decay_every, s.tau_factor, s.tau_min) \
                if model.relaxation == "gumbel" else 1.0
            entropy_w[0] = s.entropy_weight * min(1.0, max(0.0, (epoch - s.warmup_epochs + 1) /
                                                           max(1, s.epochs - s.warmup_epochs)))
            n = s.steps_per_epoch - step_in_epoch
            plan = data.plan_steps(global_step, n)  # [weight, alpha] per step; the streams move alike either way
            # an alpha batch is read only for steps that take a bilevel alpha step (not while the
            # alphas are frozen, between alpha_every steps, or ever with weight_step uniform or sparse)
            keys = [k for j, k in enumerate(plan) if j % 2 == 0 or needs_alpha_batch(epoch, global_step + j // 2)]
            batches = iter(batch_loader(data.dataset, keys, d.workers))
            for _ in range(n):
                wb = [t.to(run.device, non_blocking=True) for t in next(batches)]  # weight batch (x, pid, cam, dom)
                set_lr(w_opt, base_lr, lr_factor(epoch + step_in_epoch / s.steps_per_epoch, s.epochs, s.schedule))
                model.train()
                alphas_on = alphas_step(epoch, global_step)
                # 1. alpha step, judged on the alpha batch (weights and BN statistics left as they were)
                if needs_alpha_batch(epoch, global_step):
                    ab = [t.to(run.device, non_blocking=True) for t in next(batches)]  # alpha batch
                    loss_a = architect.step(wb, ab)
                else:
                    loss_a = None
                # 2. weight step on the training batch
                w_opt.zero_grad(set_to_none=True)
                a_opt.zero_grad(set_to_none=True)
                # sampled / uniform / sparse: one candidate per position, drawn from the alphas or not (the
                # same on every DDP rank and after a resume: the generator is seeded by the seed and step)
                path = model.sample_path(step_generator(run.seed, global_step), PATH_STEPS[s.weight_step]) \
                    if one_path else None
                loss = loss_w_fn(wrapped, wb, path)
                loss_w = run.check(loss, f"search step {global_step}")
                single = alphas_on and s.order == "single"  # single-level: alphas follow the training loss
                if single and entropy_w[0] > 0:
                    loss = loss + entropy_w[0] * mean_entropy(model)
                loss.backward()
                if s.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.weight_parameters(), s.grad_clip)
                w_opt.step()
                if single:
                    if s.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.arch_parameters(), s.grad_clip)
                    a_opt.step()
                    loss_a = loss_w
                if ctx.distributed and cfg.run.ddp_check:
                    dist.check_consistent(dist.model_groups(model, model.arch_parameters(), buffers=False), ctx,
                                          f"search step {global_step}")
                step_in_epoch, global_step = step_in_epoch + 1, global_step + 1
                run.record(history_row(model, global_step - 1, epoch, loss_w, loss_a, table, path))
                run.tick(epoch=epoch, loss=loss_w, tau=model.tau)
                if global_step % cfg.run.log_every == 0 and ctx.is_main:
                    log.info(f"epoch {epoch} step {global_step}/{total_steps} loss_w {loss_w:.4f}"
                             + (f" loss_a {loss_a:.4f}" if loss_a is not None else "") + " | "
                             + ("path " if frozen else "")  # the alphas never move: show the path
                             + " ".join(f"{p.name}:{p.names[c] if frozen else c}" for p, c in
                                        zip(model.positions, path if frozen else model.choices().values())))
                if run.stop_requested:
                    del batches  # stops the loader's workers
                    data.rewind(global_step)  # the streams as they stand at this step, not at the epoch's end
                    run.stop(parts, counters(), meta, groups(), at=f"step {global_step}")
            del batches
            epoch, step_in_epoch = epoch + 1, 0
            if epoch % cfg.run.checkpoint_every == 0 or epoch == s.epochs:
                run.save(parts, counters(), meta, groups())

    def finish():
        g = model.genotype(sources=data.domains, seed=run.seed, step=global_step)
        write_json(run_dir / FINAL_ALPHAS, g.to_dict())
        if not frozen:
            log.info("final choices: " + ", ".join(f"{k}={v['choice']} ({max(v['probs'].values()):.2f})"
                                                    for k, v in g.positions.items()))
        log.info(f"done: {run_dir} (derive with: osnas derive --run {run_dir})")

    dist.on_main(finish, ctx)
    return run_dir


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
    if s.objective == "unseen" and s.alpha_loss != "triplet":
        raise OsnasError(f"search.objective=unseen judges alphas on identities the classifier never saw: it needs "
                         f"search.alpha_loss=triplet, got {s.alpha_loss}")
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


def _write_start(cfg: Config, run_dir: Path, model: Supernet, data: SearchBatches, seed: int, ctx) -> None:
    s = cfg.search
    save_config(cfg, run_dir)
    atomic_write_text(run_dir / SPACE, model.space.text)
    write_json(run_dir / RUN_JSON, {"stage": "search", "sources": data.domains, "space": model.space.name,
                                    "space_sha256": model.space.sha256, "seed": seed, "arch": cfg.model.arch,
                                    "objective": s.objective, "order": s.order, "relaxation": model.relaxation,
                                    "shared": s.shared, "alpha_every": s.alpha_every, "weight_step": s.weight_step,
                                    "entropy_weight": s.entropy_weight, "cost_table": s.cost_table,
                                    "cost_budget": s.cost_budget,
                                    "unseen_domain": data.domains[data.unseen] if data.unseen is not None else None,
                                    "world_size": ctx.world_size, "environment": environment()})
    log.info(f"search {model.space.name} ({model.space.size()} architectures, {len(model.positions)} positions) "
             f"on {', '.join(data.domains)}: {s.objective}, {s.order}-order, {model.relaxation}; "
             f"{len(data.items)} images, {data.num_classes} identities -> {run_dir}"
             + (f" ({ctx.world_size} processes, data.batch_size per process)" if ctx.distributed else ""))
