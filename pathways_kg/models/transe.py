"""TransE (Bordes et al. 2013): ``h + r ~ t`` in real space, L1 by default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pathways_kg.models.base import KGModel


class TransE(KGModel):
    pykeen_name = "TransE"
    storage = "real"
    defaults = {"embedding_dim": 64, "scoring_fct_norm": 1}

    @classmethod
    def interaction_kwargs(cls, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "p": model_kwargs.get("scoring_fct_norm", 1),
            "power_norm": model_kwargs.get("power_norm", False),
        }
