"""Training machinery shared by the search and retrain loops.

- Exact resumability: every training image is augmented under its own seed derived from
  (run seed, stream, draw number), so a run resumed from a checkpoint (even mid-epoch and
  with any number of loader workers) sees the same pixels as an uninterrupted run.
- Batch streams: endless PK batches from one group of items (a domain, a split), drawn
  from the data layer's PK sampler epoch after epoch; their positions are checkpointed.
- Optimisers and schedules (warm-up, cosine, step), and the one non-finite-loss check.
The run around the steps (folder, resume, saves, stops) is osnas.session.
"""

from __future__ import annotations

import hashlib
import math
from typing import List, Sequence, Tuple

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


def check_finite(loss, where: str) -> None:
    """The one non-finite-loss check: raises NaNLossError (the last good checkpoint is kept)."""
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value):
        raise NaNLossError(f"non-finite loss ({value}) at {where}; stopped, the last good checkpoint is kept")
