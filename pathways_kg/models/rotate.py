"""RotatE (Sun et al. 2019): relations rotate complex entity embeddings."""

from __future__ import annotations

from pathways_kg.models.base import KGModel


class RotatE(KGModel):
    pykeen_name = "RotatE"
    storage = "complex"
    defaults = {"embedding_dim": 32}
