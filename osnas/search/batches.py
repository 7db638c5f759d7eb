"""What feeds each step of the search: a weight batch and an alpha batch, per source domain.

    heldout  each identity's images are split: the weight step trains on one part of every
             source, the alpha step is judged on the other part (the same identities).
    lodo     leave-one-domain-out: at step t source t mod N is held out; the weight step sees
             the other N-1 sources (an equal PK sub-batch from each), the alpha step only the
             held-out one, so alphas are rewarded for what transfers across domains. Every
             source still trains the weights (and the classifier) on the other steps.
    unseen   one source is kept out of every weight step for the whole search; the alpha
             step is judged on it alone. Its identities are unknown to the classifier, so it
             is scored with a metric loss (search.alpha_loss=triplet): the alphas are judged
             on data the weights never train on, as a held-out target would judge them.
    identities  each source's identities are split (search.val_fraction of them kept out,
             whole): the weight step trains on the rest of every source, the alpha step is
             judged on the kept-out identities of one source per step in turn. Every source
             trains the weights, and the alphas still see only people the weights never saw.
    auto     (the default) unseen with two or more sources (each supernet of a search keeps
             another source out, osnas/search/supernets.py; with two, each supernet's weights
             learn one source and are judged on the other), identities with one
             (`resolve_objective`). Two sources were measured: identities judges people the
             weights never saw but from domains they trained on, and answered worse on held-out
             domains than unseen, which judges on another domain (experiments/two_sources/).

Batches are lists of (image index, augmentation seed) keys drawn from endless per-domain
PK streams whose positions are checkpointed, so a resumed search sees the same pixels.
"""

from __future__ import annotations

from typing import Dict, List

from osnas.data import MultiSource, PKSampler, read_image, split_heldout, split_identities
from osnas.errors import OsnasError
from osnas.training import BatchStream, SeededDataset, concat_keys, derive_seed

OBJECTIVES = ("auto", "heldout", "lodo", "unseen", "identities")
ROTATING = ("lodo", "identities")  # the alpha batch comes from one source per step, in turn


def resolve_objective(objective: str, num_sources: int) -> str:
    """The objective a search runs with: `auto` is `unseen` with two or more sources and
    `identities` with one; an explicit choice that cannot work with this many sources is a
    one-line error. (`unseen` with two sources trains each supernet's weights on one source and
    judges it on the other; osnas search says so when it starts.)"""
    if objective not in OBJECTIVES:
        raise OsnasError(f"search.objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if objective == "auto":
        return "unseen" if num_sources >= 2 else "identities"
    if objective in ("lodo", "unseen") and num_sources < 2:
        raise OsnasError(f"search.objective={objective} needs at least 2 source domains, got {num_sources}; "
                         "add sources or leave search.objective at auto")
    return objective


class SearchBatches:
    """The union of the sources, split for the search, and the batch streams of both steps."""

    def __init__(self, union: MultiSource, objective: str, batch_size: int, num_instances: int, transform,
                 seed: int, val_fraction: float = 0.3, rank: int = 0, world_size: int = 1, unseen: str = ""):
        """union: the sources (osnas.data.build_multisource); objective: one of OBJECTIVES;
        batch_size: images per step and process (split into per-domain PK sub-batches of
        num_instances images per identity); transform: the training augmentation;
        unseen: objective=unseen: the source kept out of the weight steps ("" = the last)."""
        self.union = union
        self.domains = list(self.union.domain_names)
        nd = len(self.domains)
        objective = resolve_objective(objective, nd)
        self.unseen = self._unseen_index(unseen) if objective == "unseen" else None
        items = self.union.train
        if objective == "heldout":
            train, val = split_heldout(items, val_fraction, seed)
        elif objective == "identities":
            train, val = split_identities(items, val_fraction, seed)
        else:
            train, val = items, []
        self.items = list(train) + list(val)
        n_train = len(train)
        self.dataset = SeededDataset(self.items, transform, read_image)
        K = num_instances
        # weight batches are domain-balanced over the domains they draw from; each draw is a
        # PK sub-batch of one domain; DDP ranks draw disjoint shards of the same batches
        self.wsize = batch_size // (nd - 1 if objective in ("lodo", "unseen") else nd)
        self.asize = batch_size // nd if objective == "heldout" else batch_size
        for name, size in (("weight", self.wsize), ("alpha", self.asize)):
            if size < 2 * K or size % K:
                raise OsnasError(f"data.batch_size={batch_size} gives {name} sub-batches of {size} images per "
                                 f"domain: need a multiple of data.num_instances={K} with at least 2 identities")

        def make_sampler(pids, batch_size, k, sd):
            return PKSampler(pids, batch_size=batch_size, num_instances=k, seed=sd, rank=rank, world_size=world_size)

        self.streams: Dict[str, BatchStream] = {}
        kept_out = range(n_train, len(self.items))  # heldout / identities: the alpha step's own images
        for di, dn in enumerate(self.domains):
            tr = [i for i in range(n_train) if self.items[i][3] == di]
            self.streams[f"w{di}"] = BatchStream(f"{dn}/train", tr, [self.items[i][1] for i in tr], self.wsize, K,
                                                 derive_seed(seed, "w", di), make_sampler)
            a_idx = [i for i in kept_out if self.items[i][3] == di] if val else tr
            self.streams[f"a{di}"] = BatchStream(f"{dn}/alpha", a_idx, [self.items[i][1] for i in a_idx], self.asize,
                                                 K, derive_seed(seed, "a", di), make_sampler)
        self.objective = objective
        self.num_classes = self.union.num_classes
        self._plan_from = None  # (streams' state, global step) where the last plan began

    def _unseen_index(self, unseen: str) -> int:
        """The index of the source objective=unseen keeps out ("" = the last)."""
        from osnas.data import canonical_name

        name = unseen or self.domains[-1]
        if name not in self.domains:
            try:
                name = canonical_name(name)  # an alias (duke, market, ...)
            except OsnasError:
                pass
        if name not in self.domains:
            raise OsnasError(f"search.unseen_domain={unseen!r} is not one of the sources ({', '.join(self.domains)})")
        return self.domains.index(name)

    def alpha_steps_per_source(self) -> int:
        """Steps that give every source the alpha step draws from one alpha batch."""
        return len(self.domains) if self.objective in ROTATING else 1

    def plan_steps(self, global_step: int, n: int) -> List[List]:
        """The batches (as (index, seed) keys) of the next n steps: [weight, alpha] per step."""
        self._plan_from = (self.state_dict(), global_step)
        out = []
        nd = len(self.domains)
        for t in range(global_step, global_step + n):
            if self.objective in ("lodo", "unseen"):
                held = t % nd if self.objective == "lodo" else self.unseen
                w = concat_keys([self.streams[f"w{di}"].next() for di in range(nd) if di != held])
                a = self.streams[f"a{held}"].next()
            elif self.objective == "identities":  # every source trains; one source's kept-out people judge
                w = concat_keys([self.streams[f"w{di}"].next() for di in range(nd)])
                a = self.streams[f"a{t % nd}"].next()
            else:
                w = concat_keys([self.streams[f"w{di}"].next() for di in range(nd)])
                a = concat_keys([self.streams[f"a{di}"].next() for di in range(nd)])
            out += [w, a]
        return out

    def state_dict(self) -> dict:
        return {k: s.state() for k, s in self.streams.items()}

    def rewind(self, global_step: int) -> None:
        """Put the streams where they stand at `global_step` of the last plan. A plan covers the
        rest of an epoch, so after planning the streams are already at the epoch's end: a
        checkpoint taken mid-epoch must hold the state at its own step instead."""
        if self._plan_from is None or global_step < self._plan_from[1]:
            raise ValueError(f"no plan covers step {global_step}")
        state, start = self._plan_from
        self.load_state_dict(state)
        self.plan_steps(start, global_step - start)

    def load_state_dict(self, st: dict) -> None:
        for k, s in self.streams.items():
            s.load_state(st[k])
