"""The symmetric InfoNCE (CLIP) loss, the plain baseline."""

from __future__ import annotations

from histokg.losses.base import ContrastiveLoss, clip_loss, similarity


class InfoNCELoss(ContrastiveLoss):
    """Symmetric InfoNCE / CLIP loss (Radford et al., ICML 2021), targets = identity.

    ``L = 0.5 * (CE(s, I) + CE(s^T, I))`` with ``CE(s, I) = mean_i [-s_ii + log sum_j exp(s_ij)]``.
    """

    name = "infonce"

    def compute(self, f, g, scale, inputs):
        loss = clip_loss(similarity(f, g, scale))
        return {"loss": loss, "infonce": loss}
