"""Batch samplers for re-ID training, usable as ``DataLoader(batch_sampler=...)``.

- `RandomIdentitySampler` (alias `PKSampler`): P identities x K images per batch; an
  identity with fewer than K images is sampled with replacement.
- `DomainBalancedPKSampler`: every batch holds the same number of identities (x K images)
  from each source domain; `domain_batches(d)` draws PK batches from one domain only (the
  search's "next batch from domain d").
- `RandomBatchSampler`: plain shuffled batches.

All are deterministic functions of (seed, epoch) (call ``set_epoch(epoch)`` before each
epoch) and shard across DDP ranks: rank r of w takes every w-th batch of the epoch's plan,
truncated so that every rank gets the same number of batches.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from osnas.errors import OsnasError

log = logging.getLogger("osnas")


def _pids_of(items) -> list[int]:
    items = list(items)
    if items and isinstance(items[0], (tuple, list)):
        return [int(it[1]) for it in items]
    return [int(p) for p in items]


def _domains_of(items) -> list[int]:
    return [int(it[3]) if len(it) > 3 else 0 for it in items]


def _group(pids: Sequence[int], indices: Sequence[int] | None = None) -> dict[int, list[int]]:
    g: dict[int, list[int]] = defaultdict(list)
    for i in (range(len(pids)) if indices is None else indices):
        g[pids[i]].append(i)
    return dict(sorted(g.items()))


def _pk_pass(groups: dict[int, list[int]], P: int, K: int, rng: np.random.Generator) -> list[list[int]]:
    """One pass over the identities (torchreid's RandomIdentitySampler): each identity's images
    are shuffled and cut into chunks of K (padded by replacement when < K images); batches take
    one chunk from each of P distinct random identities until fewer than P identities remain."""
    chunks: dict[int, list[list[int]]] = {}
    for pid, idxs in groups.items():
        arr = np.asarray(idxs)
        if len(arr) < K:
            arr = rng.choice(arr, size=K, replace=True)
        arr = rng.permutation(arr)
        n = len(arr) // K
        chunks[pid] = [arr[j * K:(j + 1) * K].tolist() for j in range(n)]
    avail = [pid for pid in groups if chunks[pid]]
    batches = []
    while len(avail) >= P:
        sel = rng.choice(len(avail), size=P, replace=False)
        batch = []
        for j in sel:
            batch.extend(chunks[avail[j]].pop())
        batches.append(batch)
        avail = [pid for pid in avail if chunks[pid]]
    return batches


def _pk_stream(groups, P: int, K: int, seed_key: list) -> Iterator[list[int]]:
    """Endless PK batches: pass after pass, pass i seeded by seed_key + [i]."""
    i = 0
    while True:
        batches = _pk_pass(groups, P, K, np.random.default_rng(seed_key + [i]))
        if not batches:
            raise OsnasError(f"PK sampling: no batch can be formed from {len(groups)} identities with P={P}")
        yield from batches
        i += 1


class _ShardedBatchSampler:
    """Common machinery: per-epoch plan (cached), DDP sharding, set_epoch, __len__."""

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1, num_batches: int | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise OsnasError(f"sampler: expected 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if num_batches is not None and num_batches < 1:
            raise OsnasError(f"sampler: num_batches must be >= 1, got {num_batches}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_batches = num_batches  # per rank; None = one natural pass over the data
        self.epoch = 0
        self._cache: tuple[int, list] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _plan(self, epoch: int, n_total: int | None) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def epoch_plan(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches of an epoch (before sharding)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is None or self._cache[0] != epoch:
            n_total = None if self.num_batches is None else self.num_batches * self.world_size
            self._cache = (epoch, self._plan(epoch, n_total))
        return self._cache[1]

    def _shard(self, batches: list) -> list:
        per_rank = len(batches) // self.world_size
        return batches[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._shard(self.epoch_plan()):
            yield list(b)

    def __len__(self) -> int:
        return len(self.epoch_plan()) // self.world_size


class RandomIdentitySampler(_ShardedBatchSampler):
    """P x K batches (P = batch_size // num_instances identities, K = num_instances images each).

    items: the dataset's items (pid at position 1) or a list of pids.
    num_batches: batches per rank per epoch (default: one pass over the identities, as torchreid).
    """

    def __init__(self, items, batch_size: int, num_instances: int = 4, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_batches: int | None = None):
        super().__init__(seed, rank, world_size, num_batches)
        if num_instances < 1 or batch_size < num_instances:
            raise OsnasError(f"PK sampler: need 1 <= num_instances <= batch_size, got K={num_instances}, "
                             f"batch_size={batch_size}")
        if batch_size % num_instances:
            raise OsnasError(f"PK sampler: batch_size {batch_size} is not a multiple of num_instances {num_instances}")
        self.pids = _pids_of(items)
        self.K = num_instances
        self.P = batch_size // num_instances
        self.batch_size = batch_size
        self.groups = _group(self.pids)
        if len(self.groups) < self.P:
            raise OsnasError(f"PK sampler: {len(self.groups)} identities, fewer than the {self.P} per batch "
                             f"(batch_size {batch_size} / num_instances {num_instances}); lower data.batch_size")

    def _plan(self, epoch, n_total):
        stream = _pk_stream(self.groups, self.P, self.K, [self.seed, epoch, 11])
        if n_total is None:
            return _pk_pass(self.groups, self.P, self.K, np.random.default_rng([self.seed, epoch, 11, 0]))
        return [next(stream) for _ in range(n_total)]


PKSampler = RandomIdentitySampler


class DomainBalancedPKSampler(_ShardedBatchSampler):
    """Each batch: P_d identities x K images from every domain, P_d = batch_size // K // D.

    items: (path, pid, camid, domain_id) with pids in one label space (see multisource).
    domains: the domain ids to mix (default: all present); a batch size that does not split
    evenly is rounded down to P_d * D * K (a warning says so).
    num_batches: batches per rank per epoch (default: one pass of the smallest domain).
    """

    def __init__(self, items, batch_size: int, num_instances: int = 4, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_batches: int | None = None, domains: Sequence[int] | None = None):
        super().__init__(seed, rank, world_size, num_batches)
        items = list(items)
        self.pids = _pids_of(items)
        self.dom = _domains_of(items)
        present = sorted(set(self.dom))
        self.domains = present if domains is None else [int(d) for d in domains]
        missing = [d for d in self.domains if d not in present]
        if missing or not self.domains:
            raise OsnasError(f"domain-balanced sampler: domain id(s) {missing or '[]'} have no images "
                             f"(present: {present})")
        if num_instances < 1:
            raise OsnasError(f"domain-balanced sampler: num_instances must be >= 1, got {num_instances}")
        self.K = num_instances
        D = len(self.domains)
        self.P_d = batch_size // num_instances // D
        if self.P_d < 1:
            raise OsnasError(f"domain-balanced sampler: batch_size {batch_size} too small for {D} domains x "
                             f"num_instances {num_instances} (need at least {D * num_instances})")
        self.batch_size = self.P_d * D * self.K
        if self.batch_size != batch_size:
            log.warning("domain-balanced sampler: batch size %d rounded down to %d (%d domains x %d ids x %d images)",
                        batch_size, self.batch_size, D, self.P_d, self.K)
        self.dgroups = {}
        for d in present:
            idx = [i for i, x in enumerate(self.dom) if x == d]
            self.dgroups[d] = _group(self.pids, idx)
        for d in self.domains:
            if len(self.dgroups[d]) < self.P_d:
                raise OsnasError(f"domain-balanced sampler: domain {d} has {len(self.dgroups[d])} identities, "
                                 f"fewer than the {self.P_d} per batch; lower data.batch_size")

    def _plan(self, epoch, n_total):
        streams = {d: _pk_stream(self.dgroups[d], self.P_d, self.K, [self.seed, epoch, 22, d]) for d in self.domains}
        if n_total is None:
            n_total = min(
                len(_pk_pass(self.dgroups[d], self.P_d, self.K, np.random.default_rng([self.seed, epoch, 22, d, 0])))
                for d in self.domains
            )
        return [sum((next(streams[d]) for d in self.domains), []) for _ in range(n_total)]

    def domain_batches(self, domain_id: int, batch_size: int | None = None, epoch: int | None = None
                       ) -> Iterator[list[int]]:
        """Endless PK batches from one domain (indices into the same items), this rank's share.

        batch_size defaults to the sampler's batch size (P = batch_size // K identities, all
        from `domain_id`). Deterministic from (seed, epoch, domain_id).
        """
        d = int(domain_id)
        if d not in self.dgroups:
            raise OsnasError(f"domain-balanced sampler: domain id {d} has no images (present: {sorted(self.dgroups)})")
        bs = batch_size or self.batch_size
        P = bs // self.K
        if P < 1 or len(self.dgroups[d]) < P:
            raise OsnasError(f"domain {d}: {len(self.dgroups[d])} identities cannot fill batches of {P} ids "
                             f"x {self.K} images")
        ep = self.epoch if epoch is None else int(epoch)
        stream = _pk_stream(self.dgroups[d], P, self.K, [self.seed, ep, 33, d])
        i = 0
        for b in stream:
            if i % self.world_size == self.rank:
                yield b
            i += 1


class RandomBatchSampler(_ShardedBatchSampler):
    """Shuffled batches of `batch_size` indices (last incomplete batch dropped)."""

    def __init__(self, n_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_batches: int | None = None):
        super().__init__(seed, rank, world_size, num_batches)
        if batch_size < 1 or n_items < batch_size:
            raise OsnasError(f"random sampler: {n_items} images cannot fill a batch of {batch_size}")
        self.n, self.batch_size = int(n_items), int(batch_size)

    def _plan(self, epoch, n_total):
        out, i = [], 0
        while True:
            perm = np.random.default_rng([self.seed, epoch, 44, i]).permutation(self.n)
            nb = self.n // self.batch_size
            out += [perm[j * self.batch_size:(j + 1) * self.batch_size].tolist() for j in range(nb)]
            i += 1
            if n_total is None or len(out) >= n_total:
                return out if n_total is None else out[:n_total]


def build_train_sampler(kind: str, items, batch_size: int, num_instances: int = 4, seed: int = 0, rank: int = 0,
                        world_size: int = 1, num_batches: int | None = None):
    """kind: random | pk | domain_pk (DataConfig.sampler)."""
    items = list(items)
    if kind == "pk":
        return RandomIdentitySampler(items, batch_size, num_instances, seed, rank, world_size, num_batches)
    if kind == "domain_pk":
        return DomainBalancedPKSampler(items, batch_size, num_instances, seed, rank, world_size, num_batches)
    if kind == "random":
        return RandomBatchSampler(len(items), batch_size, seed, rank, world_size, num_batches)
    raise OsnasError(f"data.sampler {kind!r}: expected random, pk or domain_pk")


def split_heldout(items, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split each identity's images into (train part, held-out part).

    Identities with >= 2 images get round(n * fraction) held-out images, at least 1 and at
    most n - 1, so they appear in both parts with the same label; identities with a single
    image stay in the train part. Order within each part follows `items`. Deterministic.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise OsnasError(f"held-out fraction {fraction}: expected a value strictly between 0 and 1")
    items = list(items)
    groups: dict = defaultdict(list)
    for i, it in enumerate(items):
        groups[(it[3] if len(it) > 3 else 0, it[1])].append(i)
    rng = np.random.default_rng([int(seed), 55])
    val = set()
    for key in sorted(groups):
        idx = groups[key]
        n = len(idx)
        if n < 2:
            continue
        k = min(max(int(round(n * fraction)), 1), n - 1)
        val.update(idx[j] for j in rng.permutation(n)[:k])
    return [it for i, it in enumerate(items) if i not in val], [it for i, it in enumerate(items) if i in val]


def split_identities(items, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split each domain's identities into (train identities, held-out identities), whole.

    Per domain (item[3]), round(n_ids * fraction) identities, at least 2, go to the held-out
    part with all their images; at least 2 stay in the train part. The held-out identities are
    ones a network trained on the train part never saw: retrieval among them measures what
    transfers to new people, as a target domain asks. Order follows `items`. Deterministic."""
    if not 0.0 < float(fraction) < 1.0:
        raise OsnasError(f"held-out fraction {fraction}: expected a value strictly between 0 and 1")
    items = list(items)
    ids: dict = defaultdict(set)
    for it in items:
        ids[it[3] if len(it) > 3 else 0].add(it[1])
    rng = np.random.default_rng([int(seed), 56])
    held = set()
    for dom in sorted(ids):
        pids = sorted(ids[dom])
        k = max(int(round(len(pids) * fraction)), 2)
        if len(pids) - k < 2:
            raise OsnasError(f"domain {dom} has {len(pids)} identities: too few to keep {k} out and train on at "
                             "least 2 (lower search.val_fraction or add identities)")
        held.update((dom, pids[j]) for j in rng.permutation(len(pids))[:k])

    def key(it):
        return (it[3] if len(it) > 3 else 0, it[1])

    return [it for it in items if key(it) not in held], [it for it in items if key(it) in held]
