"""Training machinery shared by the search and retrain loops.

- Exact resumability: every training image is augmented under its own seed derived from
  (run seed, stream, draw number), so a run resumed from a checkpoint (even mid-epoch and
  with any number of loader workers) sees the same pixels as an uninterrupted run.
- Batch streams: endless PK batches from one group of items (a domain, a split), drawn
  from the data layer's PK sampler epoch after epoch; their positions are checkpointed.
- Optimisers and schedules (warm-up, cosine, step), SIGINT handling, NaN guards.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from contextlib import contextmanager
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from osnas.errors import NaNLossError, OsnasError


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (not Python's salted hash())."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- data
class SeededDataset(Dataset):
    """Items (path, pid, camid, domain) read and augmented under a per-request seed.

    `__getitem__((index, seed))` -> (image, label, camid, domain). `labels` maps the item to
    the training label (global pid of the union). Augmentation runs inside a forked RNG so
    the caller's RNG stream is untouched (matters when workers=0).
    """

    def __init__(self, items: Sequence[tuple], transform, read_image):
        self.items, self.transform, self.read_image = list(items), transform, read_image

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key
        path, pid, camid, domain = self.items[index][:4]
        img = self.read_image(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(img)
        return x, pid, camid, domain


class ListBatchSampler:
    """A fixed list of batches of (index, seed) keys, for DataLoader(batch_sampler=...)."""

    def __init__(self, batches: List[List[Tuple[int, int]]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def batch_loader(dataset: SeededDataset, batches: List[List[Tuple[int, int]]], workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_sampler=ListBatchSampler(batches), num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


class BatchStream:
    """Endless PK batches over a subset of a dataset's items; position = (epoch, batch index).

    `make_sampler(pids, batch_size, num_instances, seed)` must return an object with
    `set_epoch(e)` and iteration over batches of positions into `pids`.
    """

    def __init__(self, name: str, indices: Sequence[int], pids: Sequence[int], batch_size: int,
                 num_instances: int, seed: int, make_sampler):
        if len(indices) == 0:
            raise OsnasError(f"stream {name}: no images to draw batches from")
        self.name, self.indices, self.seed = name, np.asarray(indices), seed
        self.sampler = make_sampler(list(pids), batch_size, num_instances, seed)
        self.epoch, self.pos = 0, 0
        self._cache_epoch, self._cache = -1, []

    def _epoch_batches(self, e: int) -> List[List[int]]:
        if self._cache_epoch != e:
            self.sampler.set_epoch(e)
            self._cache, self._cache_epoch = [list(b) for b in self.sampler], e
            if not self._cache:
                raise OsnasError(f"stream {self.name}: too few identities/images for one batch")
        return self._cache

    def next(self) -> List[Tuple[int, int]]:
        batches = self._epoch_batches(self.epoch)
        if self.pos >= len(batches):
            self.epoch, self.pos = self.epoch + 1, 0
            batches = self._epoch_batches(self.epoch)
        b = batches[self.pos]
        keys = [(int(self.indices[i]), derive_seed(self.seed, self.name, self.epoch, self.pos, j))
                for j, i in enumerate(b)]
        self.pos += 1
        return keys

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])


def concat_keys(parts: List[List[Tuple[int, int]]]) -> List[Tuple[int, int]]:
    return [k for p in parts for k in p]


# ----------------------------------------------------------------------------- optimisation
OPTIMIZERS = ("sgd", "adam", "amsgrad")
SCHEDULES = ("cosine", "step", "constant")


def build_optimizer(params, name: str, lr: float, weight_decay: float = 5e-4, momentum: float = 0.9,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, amsgrad=name == "amsgrad")
    raise OsnasError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def lr_factor(epoch_float: float, total: float, schedule: str, warmup: float = 0.0, warmup_factor: float = 0.1,
              milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at a (fractional) epoch: linear warm-up, then the schedule."""
    if warmup > 0 and epoch_float < warmup:
        return warmup_factor + (1 - warmup_factor) * epoch_float / warmup
    if schedule == "cosine":
        t = (epoch_float - warmup) / max(total - warmup, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    if schedule == "step":
        return gamma ** sum(epoch_float >= m for m in milestones)
    if schedule == "constant":
        return 1.0
    raise OsnasError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: List[float], factor: float) -> None:
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr * factor


def guard_step(loss: torch.Tensor, stop, ctx, where: str) -> Tuple[float, bool]:
    """Before backward: (loss value, stop now?). Raises NaNLossError on a non-finite loss.

    Under DDP all ranks agree (one small all-reduce): the value is the mean over ranks, a NaN
    on any rank stops every rank, and a stop request on any rank stops all at this step.
    """
    if ctx is not None and ctx.distributed:
        from osnas import distributed as dist

        value, bad, stop_now = dist.sync_step(loss, bool(stop), ctx)
        if bad:
            raise NaNLossError(f"non-finite loss at {where} on some rank; stopped, the last good checkpoint is kept")
        return value, stop_now
    check_finite(loss, where)
    return float(loss.detach()), bool(stop)


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise NaNLossError(f"non-finite loss ({float(loss.detach())}) at {where}; stopped, the last good checkpoint is kept")


# ----------------------------------------------------------------------------- signals
class StopFlag:
    """Set by SIGINT/SIGTERM: the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.signum = None

    def __bool__(self):
        return self.signum is not None


# Under torchrun a Ctrl-C reaches each worker twice: from the terminal (process group) and
# forwarded by the agent. A repeat within this many seconds counts as the same request.
TORCHRUN_REPEAT_S = 5.0


@contextmanager
def graceful_stop():
    flag = StopFlag()
    old = {}
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    first = [0.0]

    def handler(signum, frame):
        if flag.signum is not None:  # second Ctrl-C: give up at once
            if under_torchrun and time.monotonic() - first[0] < TORCHRUN_REPEAT_S:
                return
            raise KeyboardInterrupt
        flag.signum = signum
        first[0] = time.monotonic()

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not in the main thread
            pass
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def start_run(run_dir, ctx, device_name: str = "auto") -> torch.device:
    """This process's device; on rank 0 the run folder and its log.txt (other ranks log nothing)."""
    from pathlib import Path

    from osnas.utils import resolve_device, setup_run_logging

    device = ctx.device if ctx.distributed else resolve_device(device_name)
    if ctx.is_main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        setup_run_logging(run_dir)
    else:
        setup_run_logging(None, verbose=False)
    return device


def state_dict_cpu(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in sd.items()}
