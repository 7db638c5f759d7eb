"""A subnet's embeddings after BN recalibration, with the steps it shares with subnets scored
before it computed once.

Scoring one subnet of a supernet (retrieval.py) means: reset its BN statistics and re-estimate
them on the calibration batches (train mode, cumulative average), then embed the validation
batches (eval mode). Coordinate ascent scores, at position i, every candidate with the others
fixed, so all of them share each step of the network before position i's unit; the check
against the published designs scores paths that share the stem and more.

A step's output on a batch depends only on the choices of the steps up to it: in train mode a
BN layer normalises by the batch's own statistics, and in eval mode by statistics re-estimated
from the same inputs. So the activations at a step boundary, for the calibration batches (train
mode) and the validation batches (eval mode), are kept under the key of the combos up to that
step, and a later subnet with the same prefix starts there. The same operations run on the same
tensors, so the embeddings equal a whole forward's bit for bit (tests/test_derive_prefix.py);
derive took 0.68x the time on the test-bed (experiments/benchmarks/bench_derive.py).

Kept activations are bounded by `budget` bytes (least recently used first out); a boundary too
large for it is not kept, so at full size on a small GPU the early, large boundaries are
recomputed and only the later ones are shared.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence

import torch

from osnas.models.osnet import STEPS

BUDGET = 1 << 28  # bytes of kept activations per scorer (256 MiB)


def batch_norms(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextmanager
def recalibrated_bn(model: torch.nn.Module, forward: Callable, batches: Sequence):
    """Inside: the model's BN running statistics re-estimated on `batches` (forward(x) in
    train mode, cumulative average), model in eval mode; after: everything restored."""
    bns = batch_norms(model)
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns]
    was = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        model.train()
        with torch.no_grad():
            for b in batches:
                forward(b[0])
        model.eval()
        yield model
    finally:
        for m, (mom, mean, var, n) in zip(bns, saved):
            m.momentum = mom
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
        model.train(was)


class PrefixForward:
    """`embeddings(path)`: the validation batches' embeddings [(B, D)] of one path of
    `supernet` after its BN recalibration on `calib` (module docstring)."""

    def __init__(self, supernet, calib: Sequence, val: Sequence, budget: Optional[int] = None):
        self.supernet, self.net = supernet, supernet.net
        self.budget = BUDGET if budget is None else int(budget)
        self.calib = [b[0] for b in calib]
        self.val = [b[0] for b in val]
        # key of the activations after step k -> (calib activations, val activations, bytes)
        self.kept: "OrderedDict[tuple, tuple]" = OrderedDict()
        self.steps_run = 0  # steps run on a batch (calibration and validation), for the tests

    @staticmethod
    def _keys(mix: Dict[str, list]) -> List[tuple]:
        """Per step k: the key of the activations after it, the combos of steps 0..k."""
        keys, upto = [], ()
        for name in STEPS:
            upto += (repr(mix.get(name)),)  # None where the unit is fixed
            keys.append(upto)
        return keys

    def embeddings(self, path: Sequence[int]) -> List[torch.Tensor]:
        mix = self.supernet.path_mix(list(path))
        keys = self._keys(mix)
        start, calib, val = 0, self.calib, self.val
        for k in range(len(STEPS) - 2, -1, -1):  # the deepest kept boundary (none after the head)
            if keys[k] in self.kept:
                self.kept.move_to_end(keys[k])
                calib, val, _ = self.kept[keys[k]]
                start = k + 1
                break
        collect = _Collector(range(start, len(STEPS) - 1), self.budget)

        def run(x: torch.Tensor, part: int) -> torch.Tensor:
            for k in range(start, len(STEPS)):
                x = self.net.step(STEPS[k], x, mix)
                self.steps_run += 1
                collect.add(k, part, x)
            return x

        with recalibrated_bn(self.supernet, lambda x: run(x, 0), [[a] for a in calib]), torch.no_grad():
            out = [run(a, 1) for a in val]  # per batch (B, D)
        for k, c, v, size in collect.complete():
            self._keep(keys[k], c, v, size)
        return out

    def _keep(self, key: tuple, calib: list, val: list, size: int) -> None:
        self.kept[key] = (calib, val, size)
        while sum(e[2] for e in self.kept.values()) > self.budget:
            self.kept.popitem(last=False)


class _Collector:
    """The activations of one pass at the boundaries after `steps`, each boundary dropped as
    soon as what the pass collected would exceed `budget` bytes."""

    def __init__(self, steps: range, budget: int):
        self.parts: Dict[int, tuple] = {k: ([], []) for k in steps}
        self.size = {k: 0 for k in steps}
        self.budget = budget

    def add(self, k: int, part: int, x: torch.Tensor) -> None:
        if k not in self.parts:
            return
        n = x.element_size() * x.nelement()
        if sum(self.size.values()) + n > self.budget:
            del self.parts[k], self.size[k]  # too large to keep: the step is recomputed next time
            return
        self.parts[k][part].append(x)
        self.size[k] += n

    def complete(self):
        """(step, calib activations, val activations, bytes) of each boundary not dropped (a
        dropped one is gone for the rest of the pass, so what is left is whole), the shallow
        ones first so that the deepest are the most recently used."""
        return [(k, c, v, self.size[k]) for k, (c, v) in self.parts.items()]
