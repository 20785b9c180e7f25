"""Look inside a bundle: nearest entities of an entity (overall and per relation) and a 2-D map.

Per relation r, the neighbours of an entity h are the tails t with the highest model score
f(h, r, t), computed by the model's own pykeen interaction (TransE distance, RotatE rotation, ComplEx
trilinear product, KG2E divergence) from the bundle's tensors. Overall neighbours use the cosine of
the entity vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathways_kg.bundle import Bundle
from pathways_kg.errors import KGError
from pathways_kg.io import atomic_path
from pathways_kg.models import make_interaction
from pathways_kg.registry import did_you_mean
from pathways_kg.schema import ENTITY_TYPES, RELATIONS, type_of

TYPE_COLOURS = {
    "gene": "#c8c8c8",
    "pathway": "#4c72b0",
    "celltype": "#dd8452",
    "phenotype": "#c44e52",
    "tissue": "#55a868",
}


def nearest(
    bundle: Bundle, entity: str, k: int = 10, relations: Sequence[str] | None = None
) -> dict[str, list[tuple[str, float]]]:
    """``{"similarity": [(id, cosine)...], relation: [(tail id, score)...], ...}`` for ``entity``."""
    i = _index(bundle, entity)
    vectors = bundle.entity_vectors().astype(np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit[i]
    cos[i] = -np.inf
    out = {"similarity": _top(bundle, cos, k)}
    kind = type_of(entity)
    wanted = list(relations) if relations else [r for r in bundle.relation_ids if kind in RELATIONS[r].heads]
    for r in wanted:
        if r not in bundle.relation_index:
            raise KGError(f"relation {r!r} is not in this bundle{did_you_mean(r, bundle.relation_ids)}")
        scores = relation_scores(bundle, i, bundle.relation_index[r])
        allowed = np.array([t in RELATIONS[r].tails for t in bundle.entity_types])
        scores[~allowed] = -np.inf
        scores[i] = -np.inf
        out[r] = _top(bundle, scores, k)
    return out


def relation_scores(bundle: Bundle, head: int, relation: int) -> np.ndarray:
    """Model scores f(head, relation, t) for every entity t."""
    import torch

    interaction = make_interaction(bundle.model, bundle.meta.get("model_kwargs", {}))

    def rep(tensors: dict[str, np.ndarray], prefix: str, idx: slice | list[int]):
        if bundle.storage == "gaussian":
            return tuple(torch.from_numpy(tensors[f"{prefix}_{p}"][idx]) for p in ("mean", "var"))
        x = torch.from_numpy(tensors[prefix][idx])
        return torch.view_as_complex(x.contiguous()) if bundle.storage == "complex" else x

    with torch.no_grad():
        h = rep(bundle.entity_tensors, "entity", [head])
        r = rep(bundle.relation_tensors, "relation", [relation])
        t = rep(bundle.entity_tensors, "entity", slice(None))
        return interaction(h=h, r=r, t=t).double().numpy().reshape(-1)


def plot_embeddings(
    bundle: Bundle,
    out: str | Path,
    label_types: Sequence[str] = ("phenotype", "celltype"),
    max_labels: int = 40,
    seed: int = 0,
) -> Path:
    """2-D PCA of the entity vectors coloured by entity type, written as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = bundle.entity_vectors().astype(np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    types = np.array(bundle.entity_types)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=120)
    for kind in ENTITY_TYPES:
        sel = types == kind
        if sel.any():
            size = 3 if kind == "gene" else 14 if kind == "pathway" else 40
            ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=size,
                c=TYPE_COLOURS[kind],
                label=f"{kind} ({sel.sum()})",
                alpha=0.5 if kind == "gene" else 0.85,
                linewidths=0,
            )
    labelled = [i for i, t in enumerate(types) if t in label_types]
    if len(labelled) > max_labels:
        labelled = sorted(np.random.default_rng(seed).choice(labelled, max_labels, replace=False))
    for i in labelled:
        ax.annotate(bundle.entity_ids[i].split(":", 1)[1], xy[i], fontsize=6, alpha=0.9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{bundle.model} entity embeddings ({len(types)} entities)")
    ax.legend(loc="best", fontsize=8, markerscale=2)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def _index(bundle: Bundle, entity: str) -> int:
    if entity not in bundle.entity_index:
        raise KGError(f"entity {entity!r} is not in this bundle{did_you_mean(entity, bundle.entity_ids)}")
    return bundle.entity_index[entity]


def _top(bundle: Bundle, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    finite = np.isfinite(scores)
    k = min(k, int(finite.sum()))
    if k == 0:
        return []
    top = np.argpartition(-np.where(finite, scores, -np.inf), k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return [(bundle.entity_ids[j], float(scores[j])) for j in top]
