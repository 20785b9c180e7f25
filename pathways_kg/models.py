"""Registry of KG embedding models (pykeen classes), looked up by name.

Each entry says which pykeen model it is, how its parameters are stored in a bundle (``real``: one
real matrix; ``complex``: real pairs ``(n, d, 2)``; ``gaussian``: mean and diagonal variance), its
default keyword arguments, and how to rebuild its pykeen interaction (the scoring function) from the
model kwargs recorded in a bundle. Importing this module does not import pykeen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pathways_kg.errors import KGError, suggest


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pykeen_name: str
    storage: str  # "real" | "complex" | "gaussian"
    defaults: dict[str, Any] = field(default_factory=dict)
    interaction_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda kw: {}


def _transe_interaction(kw: Mapping[str, Any]) -> dict[str, Any]:
    return {"p": kw.get("scoring_fct_norm", 1), "power_norm": kw.get("power_norm", False)}


def _kg2e_interaction(kw: Mapping[str, Any]) -> dict[str, Any]:
    return {"similarity": kw.get("dist_similarity")}


MODELS: dict[str, ModelSpec] = {
    "transe": ModelSpec(
        "transe", "TransE", "real", {"embedding_dim": 64, "scoring_fct_norm": 1}, _transe_interaction
    ),
    "rotate": ModelSpec("rotate", "RotatE", "complex", {"embedding_dim": 32}),
    # pykeen's default normal initialisation leaves ComplEx at the random baseline after short training
    "complex": ModelSpec(
        "complex",
        "ComplEx",
        "complex",
        {
            "embedding_dim": 32,
            "entity_initializer": "xavier_uniform",
            "relation_initializer": "xavier_uniform",
        },
    ),
    "kg2e": ModelSpec("kg2e", "KG2E", "gaussian", {"embedding_dim": 64}, _kg2e_interaction),
}


def get_model(name: str) -> ModelSpec:
    key = name.lower()
    if key not in MODELS:
        raise KGError(f"unknown KG model {name!r}{suggest(key, MODELS)} (registered: {', '.join(MODELS)})")
    return MODELS[key]


def make_interaction(name: str, model_kwargs: Mapping[str, Any]):
    """The pykeen interaction module that scores (h, r, t) for a registered model."""
    from pykeen.nn.modules import interaction_resolver

    spec = get_model(name)
    kwargs = {k: v for k, v in spec.interaction_kwargs(model_kwargs).items() if v is not None}
    return interaction_resolver.make(spec.pykeen_name, **kwargs)
