"""Contrastive losses of the dual encoder, with and without a knowledge-graph (KG) prior.

Notation (``docs/losses.md`` has the long version): ``f`` (N, D) image embeddings and ``g`` (N, D)
expression embeddings, both L2-normalised; ``logit_scale`` = 1/tau; ``s = logit_scale * f @ g.T``;
``W`` (N, N) the KG prior between the spots of the batch, values in [0, 1]. Every KG loss reduces
to its plain counterpart when its prior strength is 0.

One module per loss, each with one :class:`ContrastiveLoss` subclass; every subclass defined in
this package is registered under its ``name`` (:data:`loss_registry`, a
:class:`histokg.registry.Registry`; :data:`LOSSES` maps names to classes). A name is matched as
every registry name is: any case, ``-``/``_`` ignored (``KG-Soft`` is ``kg_soft``), and configs
record the registered name. Build one by name with :func:`build_loss`; calling it returns a dict of
named terms::

    loss = build_loss("kg_soft", embed_dim=128, lam=0.3)
    terms = loss(LossInputs(img=f, expr=g, logit_scale=scale, W=W))
    terms["loss"].backward()  # terms["kg_soft"] etc. are the parts, for logging

Every loss computes in float32 (or float64 when given float64) with autocast switched off, so
it is safe inside ``torch.autocast`` with bf16 or fp16, and works for any batch size N >= 1.

Adding a loss: one module here with one subclass (any module of this package is imported, so
nothing else changes) and one test case in ``tests/test_losses.py``.
"""

from __future__ import annotations

from histokg.losses.base import ContrastiveLoss, LossInputs
from histokg.registry import Registry, import_modules

# The order of these imports is the order of LOSSES.
# isort: off
from histokg.losses.infonce import InfoNCELoss
from histokg.losses.bleep import BleepLoss
from histokg.losses.kg_soft import KGSoftLoss
from histokg.losses.kg_negatives import KGNegativesLoss
from histokg.losses.kg_uniformity import KGUniformityLoss
from histokg.losses.kg_gaussian import KGGaussianLoss
# isort: on

__all__ = [
    "LOSSES",
    "BleepLoss",
    "ContrastiveLoss",
    "InfoNCELoss",
    "KGGaussianLoss",
    "KGNegativesLoss",
    "KGSoftLoss",
    "KGUniformityLoss",
    "LossInputs",
    "build_loss",
    "loss_kwargs",
    "loss_registry",
]

import_modules(__name__, __path__)  # the losses added after the six above

#: Every loss defined in this package, by name, in the order of definition.
loss_registry: Registry[type[ContrastiveLoss]] = Registry.from_subclasses(ContrastiveLoss, "loss")
LOSSES: dict[str, type[ContrastiveLoss]] = loss_registry.entries


def loss_kwargs(name: str) -> dict[str, object]:
    """The keyword arguments a registered loss accepts, with their defaults."""
    return loss_registry.kwargs(name)


def build_loss(name: str, embed_dim: int, prior_dim: int | None = None, **kwargs) -> ContrastiveLoss:
    """Build the registered loss ``name``; ``prior_dim`` is the KG Gaussian size k (kg_gaussian only).

    ``name`` follows the naming rule (``KG-Soft`` builds ``kg_soft``). Raises
    :class:`~histokg.errors.ConfigError` (a ValueError) for an unknown name or kwarg, naming it,
    suggesting the nearest valid one and listing the valid ones.
    """
    return loss_registry.make(name, {"embed_dim": embed_dim, "prior_dim": prior_dim}, **kwargs)
