"""PyTorch DDP plumbing for torchrun: `torchrun --nproc_per_node N -m osnas search ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs in one process
and every helper here is a no-op. gloo on CPU, NCCL on CUDA.

- Only rank 0 writes artifacts; `on_main` runs a write on rank 0 and shares its outcome,
  so a failing write is the same clean error on every rank, and it doubles as the barrier
  that keeps other ranks from reading a checkpoint before it is complete.
- Samplers shard batches by rank (data.batch_size is per process).
- `sync_step` is one small all-reduce per step: the mean loss, "non-finite on some rank"
  and "some rank got SIGINT/SIGTERM", so every rank stops (or saves) at the same step.
- `check_consistent` all-gathers digests of tensors (weights, alphas, BN buffers) and
  raises if ranks disagree: run at every checkpoint under DDP, after every step with
  `run.ddp_check=true`.
- `sync_buffers` gives every rank rank 0's BN running statistics before a checkpoint (DDP
  itself broadcasts them only at the start of each forward).
"""

from __future__ import annotations

import hashlib
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as tdist

from osnas.errors import OsnasError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (env vars); a plain DistContext without them.

    device: the run's `run.device`; "cpu" forces gloo on CPU even where CUDA is present.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as e:
        raise OsnasError(f"WORLD_SIZE is set but the torchrun environment is incomplete ({e}); "
                         "launch with torchrun / python -m torch.distributed.run") from None
    if torch.cuda.is_available() and str(device) != "cpu":
        if local >= torch.cuda.device_count():
            raise OsnasError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) on this node; "
                             "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(backend=backend)
    return DistContext(rank, world, local, dev, True, owns)


@contextmanager
def session(device: str = "auto"):
    """`with session(cfg.run.device) as ctx:` -- init, and a clean shutdown (no final barrier on errors)."""
    ctx = init(device)
    ok = False
    try:
        yield ctx
        ok = True
    finally:
        shutdown(ctx, clean=ok)


def shutdown(ctx: DistContext, clean: bool = True) -> None:
    """Leave the process group; `clean=False` (an exception on the way out) skips the final
    barrier, which could wait forever for ranks stuck elsewhere."""
    if ctx.distributed and ctx.owns_group and tdist.is_initialized():
        if clean:
            tdist.barrier()
        tdist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.distributed:
        return model
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def check_sync_bn(sync_bn: bool, ctx: DistContext) -> None:
    """SyncBatchNorm only runs on GPUs: say so before any work instead of failing mid-step."""
    if sync_bn and ctx.distributed and ctx.device.type == "cpu":
        raise OsnasError("run.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU/gloo implementation); "
                         "set run.sync_bn=false on CPU")


def _comm(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Collectives on NCCL need CUDA tensors; gloo takes CPU ones."""
    return t.to(ctx.device) if ctx.device.type == "cuda" else t.cpu()


def allreduce_mean(tensors: List[torch.Tensor], ctx: DistContext) -> List[torch.Tensor]:
    """Average a list of tensors over ranks (one flat all-reduce)."""
    if not ctx.distributed or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).to(ctx.device) for t in tensors])
    tdist.all_reduce(flat)
    flat /= ctx.world_size
    out, i = [], 0
    for t in tensors:
        out.append(flat[i:i + t.numel()].view_as(t).to(t.device))
        i += t.numel()
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        tdist.barrier()


def sync_step(loss: torch.Tensor, stop: bool, ctx: DistContext) -> Tuple[float, bool, bool]:
    """(loss averaged over ranks, some rank's loss is non-finite, some rank asked to stop).

    One all-reduce of three numbers, before backward: a NaN on one rank or a signal that
    reached only one rank must not leave the other ranks waiting in a collective.
    """
    v = float(loss.detach())
    finite = math.isfinite(v)
    if not ctx.distributed:
        return v, not finite, bool(stop)
    t = _comm(torch.tensor([v if finite else 0.0, 0.0 if finite else 1.0, 1.0 if stop else 0.0],
                           dtype=torch.float64), ctx)
    tdist.all_reduce(t)
    t = t.cpu()
    return float(t[0]) / ctx.world_size, bool(t[1] > 0), bool(t[2] > 0)


def on_main(fn: Callable[[], None], ctx: DistContext) -> None:
    """Run `fn` (a write) on rank 0 only, then share its outcome with every rank.

    A failing write (OsnasError: disk full, permission) raises the same error on all ranks,
    so the whole job stops cleanly; on success it is a barrier: no rank goes on (or reads the
    file) before rank 0 has finished writing.
    """
    err: Optional[str] = None
    if ctx.is_main:
        try:
            fn()
        except OsnasError as e:
            if not ctx.distributed:
                raise
            err = str(e)
    if not ctx.distributed:
        return
    box = [err]
    tdist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    if box[0] is not None:
        raise OsnasError(box[0] if ctx.is_main else f"rank 0: {box[0]}")


# ----------------------------------------------------------------------------- consistency
def digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over the raw bytes of tensors (dtype and shape included), in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_groups(model: torch.nn.Module, alphas: Sequence[torch.Tensor] = (),
                 buffers: bool = True) -> Dict[str, List[torch.Tensor]]:
    """The tensors whose agreement across ranks `check_consistent` verifies."""
    ids = {id(a) for a in alphas}
    groups = {"weights": [p for p in model.parameters() if id(p) not in ids]}
    if alphas:
        groups["alphas"] = list(alphas)
    if buffers:
        groups["BN buffers"] = list(model.buffers())
    return groups


def check_consistent(groups: Dict[str, List[torch.Tensor]], ctx: DistContext, where: str) -> Dict[str, str]:
    """All-gather a digest of each group; raise OsnasError naming the groups whose ranks disagree.

    Returns the (agreed) digests. Ranks must call it at the same point (it is a collective).
    """
    digests = {name: digest(ts) for name, ts in groups.items()}
    if not ctx.distributed:
        return digests
    gathered: List[Optional[Dict[str, str]]] = [None] * ctx.world_size
    tdist.all_gather_object(gathered, digests)
    bad = []
    for name in digests:
        ranks = [r for r, d in enumerate(gathered) if d[name] != gathered[0][name]]
        if ranks:
            bad.append(f"{name} of rank(s) {','.join(map(str, ranks))}")
    if bad:
        raise OsnasError(f"DDP ranks out of sync at {where}: {'; '.join(bad)} differ from rank 0 "
                         "(a bug in gradient synchronisation; please report it)")
    return digests


def sync_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BN running mean/var/count), as DDP does at each forward.

    Between forwards each rank's running statistics drift with its own batch; before a
    checkpoint they are made identical, so every rank holds exactly what rank 0 saves (and
    what a resumed run loads). Rank 0's own buffers never change here, so a checkpoint does
    not alter the trajectory (resume stays exact).
    """
    if not ctx.distributed:
        return
    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for b in model.buffers():
        by_dtype.setdefault(b.dtype, []).append(b)
    for bufs in by_dtype.values():
        flat = _comm(torch.cat([b.detach().reshape(-1) for b in bufs]), ctx)
        tdist.broadcast(flat, src=0)
        i = 0
        with torch.no_grad():
            for b in bufs:
                b.copy_(flat[i:i + b.numel()].view_as(b).to(b.device))
                i += b.numel()


# ----------------------------------------------------------------------------- evaluation
def gather_rows(local: torch.Tensor, n_total: int, ctx: DistContext) -> torch.Tensor:
    """Rows sharded round-robin (rank r holds rows r, r+w, ...) -> all rows in order, on every rank."""
    if not ctx.distributed:
        return local
    w = ctx.world_size
    per = (n_total + w - 1) // w
    pad = torch.zeros(per, *local.shape[1:], dtype=local.dtype)
    pad[: len(local)] = local.cpu()
    pad = _comm(pad, ctx)
    parts = [torch.zeros_like(pad) for _ in range(w)]  # on the same device as pad (NCCL needs CUDA)
    tdist.all_gather(parts, pad)
    out = torch.empty(n_total, *local.shape[1:], dtype=local.dtype)
    for r, p in enumerate(parts):
        rows = list(range(r, n_total, w))
        out[rows] = p[: len(rows)].cpu()
    return out
