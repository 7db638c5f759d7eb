"""`osnas retrain`: train a genotype (derived, or a published one) on one or more sources.

Supports the strong-baseline tricks (warm-up, random erasing, label smoothing, BNNeck,
batch-hard triplet, center loss, last stride 1) and the reference domain-generalisation
recipe (published ImageNet weights, AMSGrad, cosine, classifier-only first epochs, flip +
colour jitter, no erasing). The run folder holds config.yaml, genotype.yaml, log.txt,
train_log.jsonl (one row per epoch) and checkpoint.pth: everything eval-crossdomain needs
(weights, genotype, arch, head) plus what --resume needs (optimiser, epoch, RNG).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import torch

from osnas import distributed as dist
from osnas.config import Config, save_config
from osnas.data import (build_multisource, build_train_sampler, data_root, read_image,
                        transforms_from_config)
from osnas.errors import OsnasError
from osnas.losses import CenterLoss, reid_loss
from osnas.models import build_model, load_torchreid_weights
from osnas.models.checkpoint import model_spec
from osnas.models.genotype import Genotype, load_genotype
from osnas.rundir import CHECKPOINT, GENOTYPE, RETRAIN_RESUME_KEYS, RUN_JSON, TRAIN_LOG
from osnas.session import TrainingSession, resolve_run_config
from osnas.training import SeededDataset, batch_loader, build_optimizer, derive_seed, lr_factor, set_lr
from osnas.utils import environment, load_yaml, log, write_json


def resolve_retrain_config(genotype, sources, data_root_arg, config_file, overrides, out, resume):
    """(cfg, genotype, run_dir); the genotype's own width unless the config names one."""
    g = load_genotype(Path(out) / GENOTYPE) if resume and out else load_genotype(genotype)
    cfg, run_dir = resolve_run_config(config_file, overrides, out, resume, sources, data_root_arg,
                                      prefix=f"retrain-{g.name or 'genotype'}")
    arch_set = any(o.strip().startswith("model.arch=") for o in overrides or []) or resume
    if config_file and not arch_set:
        arch_set = "arch" in ((load_yaml(config_file) or {}).get("model") or {})
    if g.arch and not arch_set:
        cfg.model.arch = g.arch  # the width it was searched at, unless asked otherwise
    return cfg, g, run_dir


def run_retrain(genotype=None, sources=None, data_root=None, config_file=None, overrides=None, out=None,
                pretrained=None, resume=False) -> Path:
    cfg, g, run_dir = resolve_retrain_config(genotype, sources, data_root, config_file, overrides, out, resume)
    with dist.session(cfg.run.device) as ctx:
        return train(cfg, g, run_dir, pretrained=pretrained, resume=resume, ctx=ctx)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def train(cfg: Config, genotype: Genotype, run_dir: Path, pretrained: Optional[str] = None, resume: bool = False,
          ctx=None) -> Path:
    """Train `genotype` with `cfg` into `run_dir`; returns the run folder."""
    ctx = ctx or dist.DistContext()
    t, d = cfg.train, cfg.data
    with TrainingSession("retrain", run_dir, cfg.run, ctx, resume, checkpoint=CHECKPOINT, log_name=TRAIN_LOG,
                         log_cut=("epoch", "epoch"),
                         resume_keys=RETRAIN_RESUME_KEYS + (("center", "center_opt") if t.center_weight > 0 else ()),
                         continue_cmd=f"osnas retrain --genotype {run_dir / GENOTYPE} --out {run_dir} --resume") as run:
        union = build_multisource(d.sources, data_root(d.root), skip_unparsable=d.skip_unparsable,
                                  combine_all=d.combine_all)
        sampler = build_train_sampler(d.sampler, union.train, d.batch_size, d.num_instances, seed=run.seed,
                                      rank=ctx.rank, world_size=ctx.world_size, num_batches=t.steps_per_epoch or None)
        steps = len(sampler)
        if steps == 0:
            raise OsnasError(f"sources {','.join(union.domain_names)}: too few images/identities for one batch of "
                             f"{d.batch_size} (data.batch_size, data.num_instances)")
        dataset = SeededDataset(union.train, transforms_from_config(d, train=True), read_image)
        model = build_model(genotype, num_classes=union.num_classes, arch=cfg.model.arch, head=cfg.model.head,
                            feature_dim=cfg.model.feature_dim, last_stride=cfg.model.last_stride)
        if pretrained and not resume:
            report = load_torchreid_weights(model, pretrained)
            if ctx.is_main:
                log.info(f"loaded published weights {pretrained}: {report}")
        if ctx.distributed and cfg.run.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(run.device)
        center = CenterLoss(union.num_classes, model.feature_dim).to(run.device) if t.center_weight > 0 else None
        opt = build_optimizer(model.parameters(), t.optimizer, t.lr, t.weight_decay, t.momentum)
        c_opt = torch.optim.SGD(center.parameters(), lr=0.5) if center is not None else None
        wrapped = dist.wrap(model, ctx)
        base_lr = [g["lr"] for g in opt.param_groups]  # before a resumed optimiser state overwrites them
        parts = {"model": model, "optimizer": opt, "center": center, "center_opt": c_opt}
        meta = {"sources": union.domain_names, "seed": run.seed,
                **model_spec(genotype, cfg.model.arch, cfg.model.head, cfg.model.feature_dim, cfg.model.last_stride,
                             union.num_classes, (d.height, d.width), d.mean, d.std)}
        at = run.restore(parts, {"epoch": 0, "step_in_epoch": 0},
                         write_start=lambda: _write_start(cfg, genotype, run_dir, union, run.seed, pretrained, steps,
                                                          ctx))
        epoch, step_in_epoch = at["epoch"], at["step_in_epoch"]

        def groups():  # what the DDP ranks must agree on at a checkpoint
            g = dist.model_groups(model)
            if center is not None:
                g["centers"] = list(center.parameters())
            return g

        use_amp = t.amp and run.device.type in ("cuda", "cpu")
        scaler = torch.amp.GradScaler("cuda") if use_amp and run.device.type == "cuda" else None
        run.start_progress(t.epochs * steps, epoch * steps + step_in_epoch)
        while epoch < t.epochs:
            fixbase = epoch < t.fixbase_epochs
            _set_trainable(model, classifier_only=fixbase)
            sampler.set_epoch(epoch)
            batches = [[(int(i), derive_seed(run.seed, "retrain", epoch, b, j)) for j, i in enumerate(batch)]
                       for b, batch in enumerate(sampler)][step_in_epoch:]
            sums, n_seen, correct = {}, 0, 0
            for x, pids, _, _ in batch_loader(dataset, batches, d.workers):
                x, pids = x.to(run.device, non_blocking=True), pids.to(run.device, non_blocking=True)
                set_lr(opt, base_lr, lr_factor(epoch + step_in_epoch / steps, t.epochs, t.schedule, t.warmup_epochs,
                                               t.warmup_factor, t.milestones, t.gamma))
                with _autocast(run.device, use_amp):
                    logits, feats = wrapped(x)
                    loss, terms = reid_loss(logits.float(), feats.float(), pids, t.label_smooth, t.id_weight,
                                            t.triplet_weight, t.margin, center, t.center_weight)
                run.check(loss, f"retrain epoch {epoch} step {step_in_epoch}")
                opt.zero_grad(set_to_none=True)
                if c_opt is not None:
                    c_opt.zero_grad(set_to_none=True)
                _backward_step(loss, model, opt, scaler, t.grad_clip)
                if c_opt is not None:
                    _center_step(center, c_opt, t.center_weight, ctx)
                if ctx.distributed and cfg.run.ddp_check:
                    dist.check_consistent(dist.model_groups(model, buffers=False), ctx,
                                          f"retrain epoch {epoch} step {step_in_epoch}")
                step_in_epoch += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * len(pids)
                n_seen += len(pids)
                correct += int((logits.argmax(1) == pids).sum())
                run.tick(epoch=epoch, loss=float(loss.detach()))
                if run.stop_requested:
                    run.stop(parts, {"epoch": epoch, "step_in_epoch": step_in_epoch}, meta, groups(),
                             at=f"epoch {epoch} step {step_in_epoch}")
            n_seen, correct, sums = _epoch_totals(n_seen, correct, sums, ctx)
            row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "fixbase": fixbase,
                   "acc": correct / max(n_seen, 1), **{k: v / max(n_seen, 1) for k, v in sums.items()}}
            run.record(row)
            if ctx.is_main:
                log.info(f"epoch {epoch}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
            epoch, step_in_epoch = epoch + 1, 0
            if epoch % cfg.run.checkpoint_every == 0 or epoch == t.epochs:
                run.save(parts, {"epoch": epoch, "step_in_epoch": 0}, meta, groups())
    if ctx.is_main:
        log.info(f"done: {run_dir / CHECKPOINT} (evaluate with: osnas eval-crossdomain --checkpoint "
                 f"{run_dir / CHECKPOINT} --targets ...)")
    return run_dir


def _backward_step(loss, model, opt, scaler, grad_clip: float) -> None:
    """Backward and optimiser step, through the float16 gradient scaler on CUDA AMP."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def _center_step(center, c_opt, weight: float, ctx) -> None:
    """The centre update of the center loss, with the loss weight undone (Luo et al., TMM 2019)."""
    cps = list(center.parameters())
    if ctx.distributed:  # the centres are outside DDP: average their gradients here
        for p, g in zip(cps, dist.allreduce_mean([p.grad for p in cps], ctx)):
            p.grad.copy_(g)
    for p in cps:
        p.grad.data *= 1.0 / weight
    c_opt.step()


def _epoch_totals(n_seen: int, correct: int, sums: dict, ctx) -> tuple:
    """The epoch's image count, correct predictions and loss sums over all ranks' batches."""
    if not ctx.distributed:
        return n_seen, correct, sums
    keys = sorted(sums)
    tot = dist.allreduce_mean([torch.tensor([n_seen, correct] + [sums[k] for k in keys], dtype=torch.float64)],
                              ctx)[0] * ctx.world_size
    return int(round(float(tot[0]))), int(round(float(tot[1]))), {k: float(v) for k, v in zip(keys, tot[2:])}


def _write_start(cfg, genotype, run_dir: Path, union, seed: int, pretrained, steps: int, ctx) -> None:
    t = cfg.train
    save_config(cfg, run_dir)
    genotype.save(run_dir / GENOTYPE)
    write_json(run_dir / RUN_JSON, {"stage": "retrain", "genotype": genotype.name, "arch": cfg.model.arch,
                                    "sources": union.domain_names, "seed": seed, "pretrained": pretrained,
                                    "world_size": ctx.world_size, "environment": environment()})
    log.info(f"retrain {genotype.name or 'genotype'} ({cfg.model.arch}, IN at {', '.join(genotype.in_sites()) or 'none'})"
             f" on {', '.join(union.domain_names)}: {len(union.train)} images, {union.num_classes} identities, "
             f"{t.epochs} epochs x {steps} steps -> {run_dir}"
             + (f" ({ctx.world_size} processes, data.batch_size per process)" if ctx.distributed else ""))


def _set_trainable(model, classifier_only: bool) -> None:
    """Classifier-only epochs (reference DG recipe): freeze everything else, BN stats included."""
    head = model.head if hasattr(model, "head") else model.module.head
    for name, p in model.named_parameters():
        p.requires_grad_(not classifier_only or "head.classifier" in name)
    model.train()
    if classifier_only:  # the model and head stay in train mode: the head returns logits only in train mode
        for m in model.modules():
            if m is not model and m is not head and m is not head.classifier:
                m.eval()
    if getattr(head, "bottleneck", None) is not None:  # BNNeck bias stays frozen
        head.bottleneck.bias.requires_grad_(False)
