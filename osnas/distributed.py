"""PyTorch DDP plumbing for torchrun: `torchrun --nproc_per_node N -m osnas search ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs in one process.
gloo on CPU, NCCL on CUDA. Only rank 0 writes artifacts; samplers shard batches by rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as tdist


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


def init() -> DistContext:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(backend=backend)
    return DistContext(rank, world, local, device, True, owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and ctx.owns_group and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.distributed:
        return model
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def allreduce_mean(tensors: List[torch.Tensor], ctx: DistContext) -> List[torch.Tensor]:
    """Average a list of tensors over ranks (one flat all-reduce)."""
    if not ctx.distributed:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    tdist.all_reduce(flat)
    flat /= ctx.world_size
    out, i = [], 0
    for t in tensors:
        out.append(flat[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        tdist.barrier()


def gather_rows(local: torch.Tensor, n_total: int, ctx: DistContext) -> torch.Tensor:
    """Rows sharded round-robin (rank r holds rows r, r+w, ...) -> all rows in order, on every rank."""
    if not ctx.distributed:
        return local
    w = ctx.world_size
    per = (n_total + w - 1) // w
    pad = torch.zeros(per, *local.shape[1:], dtype=local.dtype)
    pad[: len(local)] = local
    parts = [torch.zeros_like(pad) for _ in range(w)]
    tdist.all_gather(parts, pad.to(ctx.device) if ctx.device.type == "cuda" else pad)
    out = torch.empty(n_total, *local.shape[1:], dtype=local.dtype)
    for r, p in enumerate(parts):
        rows = list(range(r, n_total, w))
        out[rows] = p[: len(rows)].cpu()
    return out
