"""Decoupled contrastive learning (DCL): InfoNCE without the positive in the denominator."""

from __future__ import annotations

import torch

from histokg.losses.base import ContrastiveLoss, clip_loss, similarity


def _decoupled(s: torch.Tensor) -> torch.Tensor:
    """mean_i [-s_ii + log sum_{j != i} exp(s_ij)] of one direction."""
    n = s.shape[0]
    off = s.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device), float("-inf"))
    return (torch.logsumexp(off, dim=1) - s.diagonal()).mean()


class DCLLoss(ContrastiveLoss):
    """Decoupled contrastive loss (Yeh et al., ECCV 2022), symmetric over both directions.

    ``L = 0.5 * (D(s) + D(s^T))`` with ``D(s) = mean_i [-s_ii + log sum_{j != i} exp(s_ij)]``: the positive
    pair no longer sits in its own denominator, which removes the negative-positive coupling that makes
    InfoNCE's gradient shrink with small batches. A batch of one pair has no negative to contrast: its
    loss is InfoNCE's, 0 with zero gradient.
    """

    name = "dcl"
    synonyms = ("decoupled",)

    def compute(self, f, g, scale, inputs):
        s = similarity(f, g, scale)
        loss = clip_loss(s) if s.shape[0] < 2 else 0.5 * (_decoupled(s) + _decoupled(s.T))
        return {"loss": loss, "dcl": loss}
