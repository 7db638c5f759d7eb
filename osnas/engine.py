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
import json
from pathlib import Path
from typing import Optional

import torch

from osnas import distributed as dist
from osnas.config import Config, data_root, load_yaml, resolve_run_config, save_config
from osnas.errors import OsnasError
from osnas.genotypes import load_genotype
from osnas.losses import CenterLoss, reid_loss
from osnas.models import build_model
from osnas.training import (SeededDataset, batch_loader, build_optimizer, derive_seed, graceful_stop, guard_step, start_run,
                            lr_factor, set_lr)
from osnas.utils import (Progress, append_line, atomic_write_text, load_checkpoint, log, open_append,
                         remove_stale_temps, rng_state, save_checkpoint, seed_everything, set_rng_state, write_json)

CHECKPOINT = "checkpoint.pth"
TRAIN_LOG = "train_log.jsonl"


def model_spec(cfg: Config, genotype, num_classes: int) -> dict:
    """What a checkpoint needs to rebuild its network (read by load_model_from_checkpoint), and
    the input size and normalisation it was trained with (eval-crossdomain's defaults)."""
    return {"genotype": genotype.to_dict(), "arch": cfg.model.arch, "head": cfg.model.head,
            "feature_dim": cfg.model.feature_dim, "last_stride": cfg.model.last_stride, "num_classes": num_classes,
            "input_size": [cfg.data.height, cfg.data.width], "mean": list(cfg.data.mean), "std": list(cfg.data.std)}


def resolve_retrain_config(genotype, sources, data_root_arg, config_file, overrides, out, resume):
    g = load_genotype(Path(out) / "genotype.yaml") if resume and out else load_genotype(genotype)
    cfg, run_dir = resolve_run_config(config_file, overrides, out, resume, CHECKPOINT, sources, data_root_arg,
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


def train(cfg: Config, genotype, run_dir: Path, pretrained: Optional[str] = None, resume: bool = False,
          ctx=None) -> Path:
    """Train `genotype` with `cfg` into `run_dir`; returns the run folder."""
    from osnas.data import build_multisource, build_train_sampler, read_image, transforms_from_config

    ctx = ctx or dist.DistContext()
    t, d = cfg.train, cfg.data
    dist.check_sync_bn(cfg.run.sync_bn, ctx)
    if run_dir.exists() and not resume and (run_dir / CHECKPOINT).exists():
        raise OsnasError(f"{run_dir}: already holds a retrain run; use --resume to continue it or another --out")
    # a broken checkpoint fails before any data is read and before the run folder is touched
    ck = _load_resumable(run_dir / CHECKPOINT, center=t.center_weight > 0) if resume else None
    seed = cfg.run.seed
    seed_everything(seed)
    device = start_run(run_dir, ctx, cfg.run.device)
    union = build_multisource(d.sources, data_root(d.root), skip_unparsable=d.skip_unparsable,
                              combine_all=d.combine_all)
    sampler = build_train_sampler(d.sampler, union.train, d.batch_size, d.num_instances, seed=seed, rank=ctx.rank,
                                  world_size=ctx.world_size, num_batches=t.steps_per_epoch or None)
    steps = len(sampler)
    if steps == 0:
        raise OsnasError(f"sources {','.join(union.domain_names)}: too few images/identities for one batch of "
                         f"{d.batch_size} (data.batch_size, data.num_instances)")
    dataset = SeededDataset(union.train, transforms_from_config(d, train=True), read_image)
    model = build_model(genotype, num_classes=union.num_classes, arch=cfg.model.arch, head=cfg.model.head,
                        feature_dim=cfg.model.feature_dim, last_stride=cfg.model.last_stride)
    if pretrained and not resume:
        from osnas.models import load_torchreid_weights

        report = load_torchreid_weights(model, pretrained)
        if ctx.is_main:
            log.info(f"loaded published weights {pretrained}: {report}")
    if ctx.distributed and cfg.run.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    center = CenterLoss(union.num_classes, model.feature_dim).to(device) if t.center_weight > 0 else None
    opt = build_optimizer(model.parameters(), t.optimizer, t.lr, t.weight_decay, t.momentum)
    c_opt = torch.optim.SGD(center.parameters(), lr=0.5) if center is not None else None
    base_lr = [g["lr"] for g in opt.param_groups]
    wrapped = dist.wrap(model, ctx)
    spec = model_spec(cfg, genotype, union.num_classes)
    epoch, step_in_epoch = 0, 0
    if resume:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if center is not None:
                center.load_state_dict(ck["center"])
                c_opt.load_state_dict(ck["center_opt"])
            set_rng_state(ck["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            from osnas.search.loop import _first_line

            raise OsnasError(f"{run_dir / CHECKPOINT}: does not fit this run ({_first_line(e)})") from None
        epoch, step_in_epoch = ck["epoch"], ck["step_in_epoch"]
        del ck

        def start():
            remove_stale_temps(run_dir / CHECKPOINT)  # left by a write that was killed
            _truncate_log(run_dir, epoch)
            log.info(f"resumed {run_dir} at epoch {epoch} step {step_in_epoch}"
                     + (f" on {ctx.world_size} processes" if ctx.distributed else ""))
    else:
        def start():
            _write_start(cfg, genotype, run_dir, union, seed, pretrained, steps, ctx)
    dist.on_main(start, ctx)  # under DDP: every rank waits for rank 0's writes, shares its errors

    def save(ep, sie):
        if ctx.distributed:  # all ranks: same BN buffers, then verify that the weights agree
            dist.sync_buffers(model, ctx)
            groups = dist.model_groups(model)
            if center is not None:
                groups["centers"] = list(center.parameters())
            dist.check_consistent(groups, ctx, f"retrain epoch {ep} step {sie}")
        dist.on_main(lambda: save_checkpoint(
            {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "center": center.state_dict() if center is not None else None,
             "center_opt": c_opt.state_dict() if c_opt is not None else None,
             "rng": rng_state(), "epoch": ep, "step_in_epoch": sie, "sources": union.domain_names,
             "seed": seed, **spec}, run_dir / CHECKPOINT), ctx)
        if ctx.distributed and ctx.is_main:
            log.info(f"checkpoint at epoch {ep} step {sie}: {ctx.world_size} ranks agree on weights and BN buffers "
                     f"(state sha256 {dist.digest(model.state_dict().values())[:16]})")

    use_amp = t.amp and (device.type == "cuda" or device.type == "cpu")
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None
    progress = Progress(t.epochs * steps, "retrain", "step", enabled=cfg.run.progress and ctx.is_main)
    progress.n = epoch * steps + step_in_epoch
    with graceful_stop() as stop:
        while epoch < t.epochs:
            fixbase = epoch < t.fixbase_epochs
            _set_trainable(model, classifier_only=fixbase)
            sampler.set_epoch(epoch)
            batches = [[(int(i), derive_seed(seed, "retrain", epoch, b, j)) for j, i in enumerate(batch)]
                       for b, batch in enumerate(sampler)][step_in_epoch:]
            sums, n_seen, correct = {}, 0, 0
            for x, pids, _, _ in batch_loader(dataset, batches, d.workers):
                x, pids = x.to(device, non_blocking=True), pids.to(device, non_blocking=True)
                set_lr(opt, base_lr, lr_factor(epoch + step_in_epoch / steps, t.epochs, t.schedule, t.warmup_epochs,
                                               t.warmup_factor, t.milestones, t.gamma))
                with _autocast(device, use_amp):
                    logits, feats = wrapped(x)
                    loss, parts = reid_loss(logits.float(), feats.float(), pids, t.label_smooth, t.id_weight,
                                            t.triplet_weight, t.margin, center, t.center_weight)
                _, stop_now = guard_step(loss, stop, ctx, f"retrain epoch {epoch} step {step_in_epoch}")
                opt.zero_grad(set_to_none=True)
                if c_opt is not None:
                    c_opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if c_opt is not None:
                    cps = list(center.parameters())
                    if ctx.distributed:  # the centres are outside DDP: average their gradients here
                        for p, g in zip(cps, dist.allreduce_mean([p.grad for p in cps], ctx)):
                            p.grad.copy_(g)
                    for p in cps:  # undo the loss weight on the centre update (Luo et al.)
                        p.grad.data *= 1.0 / t.center_weight
                    c_opt.step()
                if ctx.distributed and cfg.run.ddp_check:
                    groups = dist.model_groups(model, buffers=False)
                    if center is not None:
                        groups["centers"] = list(center.parameters())
                    dist.check_consistent(groups, ctx, f"retrain epoch {epoch} step {step_in_epoch}")
                step_in_epoch += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * len(pids)
                n_seen += len(pids)
                correct += int((logits.argmax(1) == pids).sum())
                progress.update(1, epoch=epoch, loss=float(loss.detach()))
                if stop_now:
                    save(epoch, step_in_epoch)
                    from osnas.search.loop import OsnasInterrupted

                    raise OsnasInterrupted(f"interrupted: checkpoint saved in {run_dir}; continue with: "
                                           f"osnas retrain --genotype {run_dir / 'genotype.yaml'} --out {run_dir} --resume")
            if ctx.distributed:  # the epoch's statistics over all ranks' batches
                keys = sorted(sums)
                tot = dist.allreduce_mean([torch.tensor([n_seen, correct] + [sums[k] for k in keys],
                                                        dtype=torch.float64)], ctx)[0] * ctx.world_size
                n_seen, correct = int(round(float(tot[0]))), int(round(float(tot[1])))
                sums = {k: float(v) for k, v in zip(keys, tot[2:])}
            row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "fixbase": fixbase,
                   "acc": correct / max(n_seen, 1), **{k: v / max(n_seen, 1) for k, v in sums.items()}}
            epoch, step_in_epoch = epoch + 1, 0
            if ctx.is_main:
                with open_append(run_dir / TRAIN_LOG) as f:
                    append_line(f, json.dumps(row))
                log.info(f"epoch {row['epoch']}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                           if isinstance(v, float)))
            if epoch % cfg.run.checkpoint_every == 0 or epoch == t.epochs:
                save(epoch, 0)
    progress.close()
    if ctx.is_main:
        log.info(f"done: {run_dir / CHECKPOINT} (evaluate with: osnas eval-crossdomain --checkpoint "
                 f"{run_dir / CHECKPOINT} --targets ...)")
    return run_dir


def _load_resumable(path: Path, center: bool) -> dict:
    ck = load_checkpoint(path, "retrain checkpoint")
    need = ("model", "optimizer", "rng", "epoch", "step_in_epoch") + (("center", "center_opt") if center else ())
    missing = [k for k in need if ck.get(k) is None]
    if missing:
        raise OsnasError(f"{path}: not a retrain checkpoint to resume (missing {', '.join(missing)})")
    return ck


def _write_start(cfg, genotype, run_dir: Path, union, seed: int, pretrained, steps: int, ctx) -> None:
    t = cfg.train
    save_config(cfg, run_dir)
    genotype.save(run_dir / "genotype.yaml")
    write_json(run_dir / "run.json", {"stage": "retrain", "genotype": genotype.name, "arch": cfg.model.arch,
                                     "sources": union.domain_names, "seed": seed, "pretrained": pretrained,
                                     "world_size": ctx.world_size})
    atomic_write_text(run_dir / TRAIN_LOG, "")
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


def _truncate_log(run_dir: Path, epoch: int) -> None:
    p = run_dir / TRAIN_LOG
    if p.is_file():
        rows = [ln for ln in p.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] < epoch]
        atomic_write_text(p, "".join(r + "\n" for r in rows))
