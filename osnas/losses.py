"""Re-ID losses: cross-entropy with label smoothing, batch-hard triplet, center loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cross_entropy_ls(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing (Szegedy et al.): targets (B,) int, logits (B, C)."""
    return F.cross_entropy(logits, targets, label_smoothing=eps)


def batch_hard_triplet(feats: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet (Hermans et al.): hardest positive and negative per anchor, Euclidean.

    feats (B, D); pids (B,). Anchors without a positive or a negative in the batch are skipped.
    """
    d = torch.cdist(feats, feats).clamp_min(1e-12)  # (B, B)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=feats.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return feats.sum() * 0.0
    hardest_pos = (d * pos_mask).amax(1)
    hardest_neg = d.masked_fill(~neg_mask, float("inf")).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al.): mean squared distance of features to their class centre."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return ((feats - self.centers[pids]) ** 2).sum(1).mean() / 2


def reid_loss(logits, feats, pids, label_smooth=0.1, id_weight=1.0, triplet_weight=0.0, margin=0.3,
              center=None, center_weight=0.0):
    """Weighted sum of the losses in use; returns (total, {name: value})."""
    parts = {}
    total = 0.0
    if id_weight > 0 and logits is not None:
        parts["id"] = cross_entropy_ls(logits, pids, label_smooth)
        total = total + id_weight * parts["id"]
    if triplet_weight > 0:
        parts["triplet"] = batch_hard_triplet(feats, pids, margin)
        total = total + triplet_weight * parts["triplet"]
    if center is not None and center_weight > 0:
        parts["center"] = center(feats, pids)
        total = total + center_weight * parts["center"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
