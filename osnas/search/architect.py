"""The Architect: alpha updates of the bilevel search (DARTS, Liu et al. 2019).

    min_alpha L_val(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha)

first   grad_alpha L_val(w, alpha) at the current weights.
second  one unrolled weight step w' = w - xi * (momentum + grad_w L_train + wd * w), then
        grad_alpha L_val(w', alpha) - xi * H v, with the Hessian-vector product
        H v = grad^2_{alpha,w} L_train . v taken by finite differences:
        (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps),
        v = grad_w' L_val(w', alpha), eps = 0.01 / ||v||.
single  (the reference) alphas follow the training loss itself; no validation batch.

The weights are perturbed in place and restored, and BN running statistics are saved and
restored around the extra forwards, so the alpha step leaves the weights exactly as it
found them.
"""

from __future__ import annotations

from typing import Callable, List

import torch

from osnas.errors import OsnasError
from osnas.training import check_finite

ORDERS = ("first", "second", "single")


class Architect:
    def __init__(self, model, loss_fn: Callable, alpha_optimizer: torch.optim.Optimizer,
                 order: str = "first", w_optimizer: torch.optim.Optimizer | None = None,
                 grad_clip: float = 0.0, reduce_fn: Callable | None = None):
        """`loss_fn(model, batch) -> scalar loss`; `w_optimizer` gives xi, momentum and wd for 2nd order.

        `reduce_fn(list_of_grads) -> list` averages gradients across DDP ranks, so every rank
        takes the same unrolled step and the same alpha step (alphas stay identical).
        """
        if order not in ORDERS:
            raise OsnasError(f"unknown search order {order!r}; valid: {', '.join(ORDERS)}")
        if order == "second" and w_optimizer is None:
            raise ValueError("second order needs the weight optimiser")
        self.model, self.loss_fn, self.opt = model, loss_fn, alpha_optimizer
        self.order, self.w_opt, self.grad_clip = order, w_optimizer, grad_clip
        self.reduce = reduce_fn or (lambda gs: gs)

    @property
    def alphas(self) -> List[torch.Tensor]:
        return self.model.arch_parameters()

    @property
    def weights(self) -> List[torch.Tensor]:
        return [p for p in self.model.weight_parameters() if p.requires_grad]

    def step(self, train_batch, val_batch) -> float:
        """One alpha update; returns the alpha-objective loss. Weights and BN stats unchanged."""
        self.opt.zero_grad(set_to_none=True)
        buffers = _save_buffers(self.model)
        if self.order == "second":
            loss = self._second_order(train_batch, val_batch)
        else:
            loss = self.loss_fn(self.model, val_batch if self.order == "first" else train_batch)
            grads = self.reduce(list(torch.autograd.grad(loss, self.alphas)))
            for a, g in zip(self.alphas, grads):
                a.grad = g
        _restore_buffers(self.model, buffers)
        # checked after the cross-rank average, so a NaN on any rank stops every rank alike
        loss = self.reduce([loss.detach().reshape(1)])[0][0]
        if not torch.isfinite(loss) or not all(torch.isfinite(a.grad).all() for a in self.alphas):
            self.opt.zero_grad(set_to_none=True)
            check_finite(float("nan"), "the alpha step (loss or alpha gradient)")
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.alphas, self.grad_clip)
        self.opt.step()
        return float(loss.detach())

    def hypergradient(self, train_batch, val_batch) -> List[torch.Tensor]:
        """The second-order alpha gradient alone (tests compare it with finite differences)."""
        buffers = _save_buffers(self.model)
        self._second_order(train_batch, val_batch)
        _restore_buffers(self.model, buffers)
        return [a.grad.clone() for a in self.alphas]

    # -- second order
    def _xi_momentum_wd(self):
        group = self.w_opt.param_groups[0]
        return group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)

    def _second_order(self, train_batch, val_batch) -> torch.Tensor:
        xi, mom, wd = self._xi_momentum_wd()
        W = self.weights
        backup = [w.detach().clone() for w in W]
        # unrolled step on the training batch: w' = w - xi * (m * buf + g + wd * w)
        loss_t = self.loss_fn(self.model, train_batch)  # NaNs propagate and are caught in step()
        g_t = self.reduce(_fill(torch.autograd.grad(loss_t, W, allow_unused=True), W))
        with torch.no_grad():
            for w, g in zip(W, g_t):
                d = g + wd * w
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                if buf is not None and mom:
                    d = d + mom * buf
                w.sub_(xi * d)
        # validation gradient at w'
        loss_v = self.loss_fn(self.model, val_batch)
        params = list(self.alphas) + W
        grads = self.reduce(_fill(torch.autograd.grad(loss_v, params, allow_unused=True), params))
        g_alpha, v = grads[: len(self.alphas)], grads[len(self.alphas):]
        # finite-difference Hessian-vector product around the original w
        norm = float(torch.sqrt(sum((x * x).sum() for x in v)))
        eps = 0.01 / (norm + 1e-12) if norm == norm and norm != float("inf") else 0.01
        with torch.no_grad():
            for w, b, x in zip(W, backup, v):
                w.copy_(b + eps * x)
        gp = self.reduce(_fill(torch.autograd.grad(self.loss_fn(self.model, train_batch), self.alphas,
                                                   allow_unused=True), self.alphas))
        with torch.no_grad():
            for w, b, x in zip(W, backup, v):
                w.copy_(b - eps * x)
        gn = self.reduce(_fill(torch.autograd.grad(self.loss_fn(self.model, train_batch), self.alphas,
                                                   allow_unused=True), self.alphas))
        with torch.no_grad():
            for w, b in zip(W, backup):
                w.copy_(b)
        for a, ga, p, n in zip(self.alphas, g_alpha, gp, gn):
            hv = (p - n) / (2 * eps)
            a.grad = ga - xi * hv
        return loss_v


def _fill(grads, params) -> List[torch.Tensor]:
    """autograd.grad with allow_unused gives None for untouched tensors: use zeros."""
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def _save_buffers(model) -> List[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def _restore_buffers(model, saved) -> None:
    with torch.no_grad():
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
