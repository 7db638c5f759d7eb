"""`osnas search`: bilevel search of IN/BN placement over several source domains.

Each step: (1) an alpha step on a batch the weights did not just train on, then (2) a
weight step. The alpha batch comes from
  heldout  held-out images of the same identities (each identity's images split), or
  lodo     leave-one-domain-out: the held-out source domain rotates every step, the weight
           step sees the other sources, the alpha step only the held-out one, so alphas
           are rewarded for what transfers across domains.
Alphas are frozen for the first `warmup_epochs`. Everything the run does lands in its
folder: config.yaml, space.yaml, alphas.jsonl (every step: alphas, probabilities,
entropy, losses), checkpoint.pth (weights, alphas, optimisers, streams, RNG), log.txt.
`--resume` continues the same trajectory, bit for bit on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

from osnas import distributed as dist
from osnas.config import Config, data_root, resolve_run_config, save_config
from osnas.errors import OsnasError
from osnas.losses import reid_loss
from osnas.search import relax
from osnas.search.architect import Architect
from osnas.search.supernet import Supernet
from osnas.training import (BatchStream, SeededDataset, batch_loader, build_optimizer, guard_step,
                            concat_keys, derive_seed, graceful_stop, lr_factor, set_lr, start_run)
from osnas.utils import (Progress, append_line, atomic_write_text, load_checkpoint, log, open_append,
                         remove_stale_temps, rng_state, save_checkpoint, seed_everything, set_rng_state, write_json)

CHECKPOINT = "checkpoint.pth"
HISTORY = "alphas.jsonl"
OBJECTIVES = ("heldout", "lodo")
LOSSES = ("id", "triplet", "both")


# ----------------------------------------------------------------------------- data
class SearchData:
    """The union of the sources, split for the search, and its batch streams."""

    def __init__(self, cfg: Config, root: Path, seed: int, rank: int = 0, world_size: int = 1):
        from osnas.data import PKSampler, build_multisource, read_image, split_heldout, transforms_from_config

        d, s = cfg.data, cfg.search
        self.union = build_multisource(d.sources, root, skip_unparsable=d.skip_unparsable, combine_all=d.combine_all)
        self.domains = list(self.union.domain_names)
        nd = len(self.domains)
        if s.objective == "lodo" and nd < 2:
            raise OsnasError(f"search.objective=lodo needs at least 2 source domains, got {self.domains}; "
                             "add sources or use --set search.objective=heldout")
        items = self.union.train
        if s.objective == "heldout":
            train, val = split_heldout(items, s.val_fraction, seed)
        else:
            train, val = items, []
        self.items = list(train) + list(val)
        n_train = len(train)
        self.dataset = SeededDataset(self.items, transforms_from_config(d, train=True), read_image)
        K = d.num_instances
        # weight batches are domain-balanced over the domains they draw from; each draw is a
        # PK sub-batch of one domain; DDP ranks draw disjoint shards of the same batches
        self.wsize = d.batch_size // (nd - 1 if s.objective == "lodo" else nd)
        self.asize = d.batch_size if s.objective == "lodo" else d.batch_size // nd
        for name, size in (("weight", self.wsize), ("alpha", self.asize)):
            if size < 2 * K or size % K:
                raise OsnasError(f"data.batch_size={d.batch_size} gives {name} sub-batches of {size} images per "
                                 f"domain: need a multiple of data.num_instances={K} with at least 2 identities")

        def make_sampler(pids, batch_size, k, sd):
            return PKSampler(pids, batch_size=batch_size, num_instances=k, seed=sd, rank=rank, world_size=world_size)

        self.streams: Dict[str, BatchStream] = {}
        for di, dn in enumerate(self.domains):
            tr = [i for i in range(n_train) if self.items[i][3] == di]
            self.streams[f"w{di}"] = BatchStream(f"{dn}/train", tr, [self.items[i][1] for i in tr], self.wsize, K,
                                                 derive_seed(seed, "w", di), make_sampler)
            a_idx = tr if s.objective == "lodo" else [i for i in range(n_train, len(self.items)) if self.items[i][3] == di]
            self.streams[f"a{di}"] = BatchStream(f"{dn}/alpha", a_idx, [self.items[i][1] for i in a_idx], self.asize,
                                                 K, derive_seed(seed, "a", di), make_sampler)
        self.objective = s.objective
        self.num_classes = self.union.num_classes

    def plan_steps(self, global_step: int, n: int) -> List[List]:
        """The batches (as (index, seed) keys) of the next n steps: [weight, alpha] per step."""
        out = []
        nd = len(self.domains)
        for t in range(global_step, global_step + n):
            if self.objective == "lodo":
                held = t % nd
                w = concat_keys([self.streams[f"w{di}"].next() for di in range(nd) if di != held])
                a = self.streams[f"a{held}"].next()
            else:
                w = concat_keys([self.streams[f"w{di}"].next() for di in range(nd)])
                a = concat_keys([self.streams[f"a{di}"].next() for di in range(nd)])
            out += [w, a]
        return out

    def state(self):
        return {k: s.state() for k, s in self.streams.items()}

    def load_state(self, st):
        for k, s in self.streams.items():
            s.load_state(st[k])


# ----------------------------------------------------------------------------- losses
def make_loss_fn(kind: str, label_smooth: float, margin: float):
    if kind not in LOSSES:
        raise OsnasError(f"search loss {kind!r}: expected one of {', '.join(LOSSES)}")
    idw = 1.0 if kind in ("id", "both") else 0.0
    trw = 1.0 if kind in ("triplet", "both") else 0.0

    def loss_fn(model, batch):
        x, pids = batch[0], batch[1]
        logits, feats = model(x)
        loss, _ = reid_loss(logits, feats, pids, label_smooth=label_smooth, id_weight=idw, triplet_weight=trw,
                            margin=margin)
        return loss

    return loss_fn


# ----------------------------------------------------------------------------- records
def history_row(model: Supernet, step: int, epoch: int, loss_w: float, loss_a: Optional[float]) -> dict:
    probs = model.probs()
    return {
        "step": step, "epoch": epoch, "tau": model.tau, "loss_w": round(loss_w, 6),
        "loss_a": None if loss_a is None else round(loss_a, 6),
        "alphas": {p.name: [round(float(v), 6) for v in a.detach()] for p, a in zip(model.positions, model.alphas)},
        "probs": {p.name: {c: round(float(v), 6) for c, v in zip(p.names, pr)} for p, pr in zip(model.positions, probs)},
        "entropy": {p.name: round(relax.entropy(pr), 6) for p, pr in zip(model.positions, probs)},
    }


def read_history(run_dir: Path) -> List[dict]:
    p = Path(run_dir) / HISTORY
    if not p.is_file():
        return []
    rows = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(p.read_text().splitlines()) - 1:
                break  # a torn last line from a killed run
            raise OsnasError(f"{p}: line {i + 1} is not valid JSON") from None
    return rows


def _truncate_history(run_dir: Path, last_step: int) -> None:
    rows = [r for r in read_history(run_dir) if r["step"] <= last_step]
    atomic_write_text(Path(run_dir) / HISTORY, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- entry point
def resolve_search_config(sources, data_root_arg, space, config_file, overrides, out, resume) -> tuple:
    cfg, run_dir = resolve_run_config(config_file, overrides, out, resume, CHECKPOINT, sources, data_root_arg,
                                      prefix="search")
    if space:
        cfg.search.space = str(space)
    return cfg, run_dir


def run_search(sources=None, data_root=None, space=None, config_file=None, overrides=None, out=None,
               resume=False, cfg: Optional[Config] = None) -> Path:
    """Run (or resume) a search; returns the run folder."""
    if cfg is None:
        cfg, run_dir = resolve_search_config(sources, data_root, space, config_file, overrides, out, resume)
    else:
        run_dir = Path(out)
    with dist.session(cfg.run.device) as ctx:
        return _search(cfg, run_dir, resume, ctx)


def validate_search_config(cfg: Config):
    """Fail on bad choices before any data is read or generated; returns the search space."""
    from osnas.models.osnet import WIDTHS
    from osnas.search.architect import ORDERS
    from osnas.search.space import load_space

    s = cfg.search
    for key, val, valid in (("search.objective", s.objective, OBJECTIVES), ("search.order", s.order, ORDERS),
                            ("search.alpha_loss", s.alpha_loss, LOSSES), ("model.arch", cfg.model.arch, WIDTHS),
                            ("search.relaxation", s.relaxation, relax.RELAXATIONS + ("",))):
        if val not in valid:
            raise OsnasError(f"{key}={val!r}: expected one of {', '.join(v for v in valid if v)}")
    if s.epochs < 1 or s.steps_per_epoch < 1:
        raise OsnasError(f"search.epochs and search.steps_per_epoch must be >= 1, got {s.epochs}, {s.steps_per_epoch}")
    return load_space(s.space)


def _search(cfg: Config, run_dir: Path, resume: bool, ctx) -> Path:
    s, d = cfg.search, cfg.data
    space = validate_search_config(cfg)
    dist.check_sync_bn(cfg.run.sync_bn, ctx)
    if run_dir.exists() and not resume and (run_dir / CHECKPOINT).exists():
        raise OsnasError(f"{run_dir}: already holds a search run; use --resume to continue it or another --out")
    # a broken checkpoint fails before any data is read and before the run folder is touched
    ck = _load_resumable(run_dir / CHECKPOINT, space.sha256, cfg.model.arch, s.shared) if resume else None
    seed_everything(s_seed := cfg.run.seed)
    device = start_run(run_dir, ctx, cfg.run.device)
    data = SearchData(cfg, data_root(d.root), s_seed, ctx.rank, ctx.world_size)
    model = Supernet(s.space, arch=cfg.model.arch, num_classes=data.num_classes, head=cfg.model.head,
                     feature_dim=cfg.model.feature_dim, last_stride=cfg.model.last_stride, shared=s.shared,
                     relaxation=s.relaxation, alpha_init=s.alpha_init).to(device)
    if ctx.distributed and cfg.run.sync_bn:
        model.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.net)
    w_opt = build_optimizer(model.weight_parameters(), s.optimizer, s.lr, s.weight_decay, s.momentum)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=s.alpha_lr, betas=tuple(s.alpha_betas),
                             weight_decay=s.alpha_weight_decay)
    loss_w_fn = make_loss_fn("id" if s.alpha_loss == "triplet" else s.alpha_loss, s.label_smooth, s.margin)
    loss_a_fn = make_loss_fn(s.alpha_loss, s.label_smooth, s.margin)
    wrapped = dist.wrap(model, ctx)  # DDP averages weight (and alpha) gradients of the weight step
    architect = Architect(model, loss_a_fn, a_opt, order=s.order, w_optimizer=w_opt, grad_clip=s.grad_clip,
                          reduce_fn=(lambda gs: dist.allreduce_mean(gs, ctx)) if ctx.distributed else None)
    base_lr = [g["lr"] for g in w_opt.param_groups]
    epoch, step_in_epoch, global_step = 0, 0, 0
    if resume:
        try:
            model.load_state_dict(ck["model"])
            w_opt.load_state_dict(ck["w_opt"])
            a_opt.load_state_dict(ck["a_opt"])
            data.load_state(ck["streams"])
            set_rng_state(ck["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise OsnasError(f"{run_dir / CHECKPOINT}: does not fit this run ({_first_line(e)})") from None
        epoch, step_in_epoch, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        del ck

        def start():
            remove_stale_temps(run_dir / CHECKPOINT)  # left by a write that was killed
            _truncate_history(run_dir, global_step - 1)
            log.info(f"resumed {run_dir} at epoch {epoch} step {step_in_epoch} (global step {global_step})"
                     + (f" on {ctx.world_size} processes" if ctx.distributed else ""))
    else:
        def start():
            _write_start(cfg, run_dir, model, data, s_seed, ctx)
    dist.on_main(start, ctx)  # under DDP: every rank waits for rank 0's writes, shares its errors

    def save(ep, sie, gs):
        if ctx.distributed:  # all ranks: same BN buffers, then verify that weights/alphas/buffers agree
            dist.sync_buffers(model, ctx)
            dist.check_consistent(dist.model_groups(model, model.arch_parameters()), ctx, f"search step {gs}")
        dist.on_main(lambda: _save_search_checkpoint(run_dir, model, w_opt, a_opt, data, ep, sie, gs, s_seed, ctx),
                     ctx)

    total_steps = s.epochs * s.steps_per_epoch
    progress = Progress(total_steps, "search", "step", enabled=cfg.run.progress and ctx.is_main)
    progress.n = global_step
    hist = open_append(run_dir / HISTORY) if ctx.is_main else None
    try:
        with graceful_stop() as stop:
            while epoch < s.epochs:
                model.tau = relax.gumbel_tau(epoch, s.tau_init, s.tau_decay_every, s.tau_factor, s.tau_min) \
                    if model.relaxation == "gumbel" else 1.0
                n = s.steps_per_epoch - step_in_epoch
                loader = batch_loader(data.dataset, data.plan_steps(global_step, n), d.workers)
                it = iter(loader)
                for _ in range(n):
                    wb = [t.to(device, non_blocking=True) for t in next(it)]
                    ab = [t.to(device, non_blocking=True) for t in next(it)]
                    set_lr(w_opt, base_lr, lr_factor(epoch + step_in_epoch / s.steps_per_epoch, s.epochs, s.schedule))
                    model.train()
                    loss_a = None
                    alphas_on = epoch >= s.warmup_epochs
                    if alphas_on and s.order != "single":
                        loss_a = architect.step(wb, ab)
                    # weight step (single-level: alphas follow the same training loss)
                    w_opt.zero_grad(set_to_none=True)
                    a_opt.zero_grad(set_to_none=True)
                    loss = loss_w_fn(wrapped, wb)
                    loss_w, stop_now = guard_step(loss, stop, ctx, f"search step {global_step}")
                    loss.backward()
                    if s.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.weight_parameters(), s.grad_clip)
                    w_opt.step()
                    if alphas_on and s.order == "single":
                        a_opt.step()
                        loss_a = loss_w
                    if ctx.distributed and cfg.run.ddp_check:
                        dist.check_consistent(dist.model_groups(model, model.arch_parameters(), buffers=False), ctx,
                                              f"search step {global_step}")
                    step_in_epoch += 1
                    global_step += 1
                    if hist is not None:
                        append_line(hist, json.dumps(history_row(model, global_step - 1, epoch, loss_w, loss_a)))
                    progress.update(1, epoch=epoch, loss=loss_w, tau=model.tau)
                    if global_step % cfg.run.log_every == 0 and ctx.is_main:
                        log.info(f"epoch {epoch} step {global_step}/{total_steps} loss_w {loss_w:.4f}"
                                 + (f" loss_a {loss_a:.4f}" if loss_a is not None else "") + " | "
                                 + " ".join(f"{p.name}:{model.choices()[p.name]}" for p in model.positions))
                    if stop_now:
                        save(epoch, step_in_epoch, global_step)
                        del it, loader
                        raise OsnasInterrupted(f"interrupted: checkpoint saved at step {global_step} in {run_dir}; "
                                               f"continue with: osnas search --out {run_dir} --resume")
                del it, loader
                epoch, step_in_epoch = epoch + 1, 0
                if epoch % cfg.run.checkpoint_every == 0 or epoch == s.epochs:
                    save(epoch, 0, global_step)
    finally:
        progress.close()
        if hist is not None:
            hist.close()

    def finish():
        g = model.genotype(sources=data.domains, seed=s_seed, step=global_step)
        write_json(run_dir / "final_alphas.json", g.to_dict())
        log.info("final choices: " + ", ".join(f"{k}={v['choice']} ({max(v['probs'].values()):.2f})"
                                                for k, v in g.positions.items()))
        log.info(f"done: {run_dir} (derive with: osnas derive --run {run_dir})")

    dist.on_main(finish, ctx)
    return run_dir


def _write_start(cfg, run_dir: Path, model: Supernet, data: SearchData, seed: int, ctx) -> None:
    s = cfg.search
    save_config(cfg, run_dir)
    atomic_write_text(run_dir / "space.yaml", model.space.text)
    write_json(run_dir / "run.json", {"stage": "search", "sources": data.domains, "space": model.space.name,
                                     "space_sha256": model.space.sha256, "seed": seed, "arch": cfg.model.arch,
                                     "objective": s.objective, "order": s.order, "relaxation": model.relaxation,
                                     "shared": s.shared, "world_size": ctx.world_size})
    (run_dir / HISTORY).write_text("")
    log.info(f"search {model.space.name} ({model.space.size()} architectures, {len(model.positions)} positions) "
             f"on {', '.join(data.domains)}: {s.objective}, {s.order}-order, {model.relaxation}; "
             f"{len(data.items)} images, {data.num_classes} identities -> {run_dir}"
             + (f" ({ctx.world_size} processes, data.batch_size per process)" if ctx.distributed else ""))


def _save_search_checkpoint(run_dir: Path, model: Supernet, w_opt, a_opt, data: SearchData, ep: int, sie: int,
                            gs: int, seed: int, ctx) -> None:
    save_checkpoint({"model": model.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                     "streams": data.state(), "rng": rng_state(), "epoch": ep, "step_in_epoch": sie,
                     "global_step": gs, "space": model.space.name, "space_sha256": model.space.sha256,
                     "arch": model.arch, "shared": model.shared, "relaxation": model.relaxation,
                     "positions": [p.name for p in model.positions], "sources": data.domains, "seed": seed},
                    run_dir / CHECKPOINT)
    if ctx.distributed:
        log.info(f"checkpoint at step {gs}: {ctx.world_size} ranks agree on weights, alphas and BN buffers "
                 f"(state sha256 {dist.digest(model.state_dict().values())[:16]})")


class OsnasInterrupted(OsnasError):
    exit_code = 130


RESUME_KEYS = ("model", "w_opt", "a_opt", "streams", "rng", "epoch", "step_in_epoch", "global_step")


def _load_resumable(path: Path, space_sha256: str, arch: str, shared: bool) -> dict:
    ck = load_checkpoint(path, "search checkpoint")
    missing = [k for k in RESUME_KEYS if k not in ck]
    if missing:
        raise OsnasError(f"{path}: not a search checkpoint (missing {', '.join(missing)})")
    for key, mine in (("space_sha256", space_sha256), ("arch", arch), ("shared", shared)):
        if ck.get(key) != mine:
            raise OsnasError(f"{path}: checkpoint does not match the run's config: {key} is {ck.get(key)!r} in the "
                             f"checkpoint, {mine!r} now")
    return ck


def _first_line(e: BaseException) -> str:
    """The gist of a (possibly multi-line) torch error, for a one-line message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return ("; ".join(lines[:2]) or type(e).__name__)[:300]
