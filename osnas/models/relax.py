"""Relaxations: alphas of one position -> mixing weights over its candidates.

softmax  DARTS: w = softmax(alpha).
gumbel   w = softmax((alpha + g) / tau), g ~ Gumbel(0, 1) in training; no noise in eval
         (w = softmax(alpha / tau)), unlike the reference, which drew noise in eval too.
sigmoid  binary positions: alpha is one scalar, w = [1 - s, s] with s = sigmoid(alpha).

`probs` are the deterministic probabilities that derivation, plots and entropy use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from osnas.errors import OsnasError

RELAXATIONS = ("softmax", "gumbel", "sigmoid")


def alpha_size(relaxation: str, n_candidates: int) -> int:
    return 1 if relaxation == "sigmoid" else n_candidates


def probs(alpha: torch.Tensor, relaxation: str) -> torch.Tensor:
    if relaxation == "sigmoid":
        s = torch.sigmoid(alpha)  # (1,)
        return torch.cat([1 - s, s])
    return F.softmax(alpha, dim=-1)


def weights(alpha: torch.Tensor, relaxation: str, tau: float = 1.0, training: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Mixing weights for one forward pass (differentiable in alpha)."""
    if relaxation == "softmax" or relaxation == "sigmoid":
        return probs(alpha, relaxation)
    if relaxation == "gumbel":
        if not training:
            return F.softmax(alpha / tau, dim=-1)
        u = torch.rand(alpha.shape, generator=generator, dtype=alpha.dtype, device=alpha.device)
        g = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))  # Gumbel(0, 1)
        return F.softmax((alpha + g) / tau, dim=-1)
    raise OsnasError(f"unknown relaxation {relaxation!r}; valid: {', '.join(RELAXATIONS)}")


def entropy(p: torch.Tensor) -> float:
    """Shannon entropy in nats of a probability vector."""
    p = p.detach().clamp_min(1e-12)
    return float(-(p * p.log()).sum())


def gumbel_tau(epoch: int, tau_init: float, decay_every: int, factor: float, tau_min: float) -> float:
    """The reference schedule: tau_init, multiplied by `factor` every `decay_every` epochs, floor tau_min."""
    if decay_every <= 0:
        return tau_init
    return max(tau_min, tau_init * factor ** (epoch // decay_every))
