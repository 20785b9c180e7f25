"""Metrics shared by validation during training and by ``histokg evaluate``."""

from __future__ import annotations

import numpy as np
import torch

from histokg.errors import InputError

# A column whose standard deviation is below this fraction of its largest magnitude is constant: float32
# rounding leaves such noise in predictions of a collapsed model, and it must not pass for a signal.
CONSTANT_RTOL = 1e-6


class MetricInputError(InputError):
    """A metric met input it cannot score honestly (non-finite values, mismatched shapes)."""


def require_finite(name: str, x: np.ndarray | torch.Tensor) -> None:
    """Raise :class:`MetricInputError` naming ``name`` if ``x`` holds NaN or infinite values."""
    finite = (
        torch.isfinite(x) if isinstance(x, torch.Tensor) else np.isfinite(np.asarray(x, dtype=np.float64))
    )
    if not bool(finite.all()):
        bad = int((~finite).sum())
        total = int(np.prod(tuple(x.shape))) if len(x.shape) else 1
        raise MetricInputError(
            f"{name} has {bad} non-finite values (of {total}); a metric cannot score NaN or infinite "
            "embeddings or predictions (was a gene missing, or did training diverge?)"
        )


def retrieval_recall(
    query: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor, ks=(1, 5, 10)
) -> dict[int, float]:
    """Recall@k of cross-modal retrieval: query i's true match is candidate i.

    Embeddings are L2-normalised rows; the whole candidate set is the pool (not a batch). Ties
    count against the query: its rank is the number of candidates scoring at least as high as the
    match (the match included), so constant or collapsed embeddings rank every match last and never
    score above chance. Non-finite embeddings raise :class:`MetricInputError`.
    """
    q = torch.as_tensor(query, dtype=torch.float32)
    c = torch.as_tensor(candidates, dtype=torch.float32)
    if q.shape != c.shape:
        raise MetricInputError(f"query {tuple(q.shape)} and candidates {tuple(c.shape)} must pair row by row")
    require_finite("retrieval query embeddings", q)
    require_finite("retrieval candidate embeddings", c)
    sims = q @ c.T
    true = sims.diagonal().unsqueeze(1)
    rank = (sims >= true).sum(dim=1)  # 1 = the match alone scores highest
    return {k: float((rank <= k).float().mean()) for k in ks}


def chance_recall(n: int, k: int) -> float:
    """Recall@k of a random ranking over ``n`` candidates."""
    return min(1.0, k / n)


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column over rows.

    A gene whose measured values are constant on these rows has no defined correlation: NaN (callers
    leave it out and count it). A constant *prediction* of a gene that varies carries no information:
    0, never NaN, so a collapsed model cannot drop its worst genes from an average. Non-finite input
    raises :class:`MetricInputError`.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise MetricInputError(f"pred {pred.shape} and true {true.shape} must have the same shape")
    require_finite("predicted expression", pred)
    require_finite("measured expression", true)
    pc = pred - pred.mean(axis=0)
    tc = true - true.mean(axis=0)
    pvar, tvar = (pc**2).sum(axis=0), (tc**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / np.sqrt(pvar * tvar)
    r[_constant_columns(pred, pvar)] = 0.0
    r[_constant_columns(true, tvar)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _constant_columns(x: np.ndarray, centred_sq_sum: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.ones(x.shape[1:], dtype=bool)
    std = np.sqrt(centred_sq_sum / len(x))
    return std <= CONSTANT_RTOL * np.abs(x).max(axis=0)


def knn_search(query: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` reference rows of highest inner product with each query row (exact, faiss).

    Returns ``(similarity, index)``, both ``(n_query, min(k, n_reference))``, best first. On
    L2-normalised rows the inner product is the cosine similarity. Ties keep the lower reference
    index (first at equal similarity, and the one kept at the k-th place). faiss searches in blocks,
    so memory grows with ``n_query * k``, never with ``n_query * n_reference``.
    """
    import faiss

    q = np.ascontiguousarray(query, dtype=np.float32)
    r = np.ascontiguousarray(reference, dtype=np.float32)
    require_finite("kNN query embeddings", torch.from_numpy(q))  # torch: no float64 copy
    require_finite("kNN reference embeddings", torch.from_numpy(r))
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise MetricInputError(f"query {q.shape} and reference {r.shape} must be 2-D with the same width")
    if len(r) == 0:
        raise MetricInputError("kNN: the reference is empty")
    k = int(min(k, len(r)))
    if len(q) == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    sims, idx = faiss.knn(q, r, k, metric=faiss.METRIC_INNER_PRODUCT)
    order = np.lexsort((idx, -sims), axis=1)  # best first; equal similarity: lower index first
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)


def knn_predict(
    query: np.ndarray,
    reference: np.ndarray,
    values: np.ndarray,
    k: int = 10,
    temperature: float = 0.1,
    *,
    spread: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted mean of ``values`` over the ``k`` nearest reference rows (cosine).

    BLEEP-style expression prediction: query = image embeddings, reference = expression
    embeddings of a reference set, values = its measured expression. Neighbours come from
    :func:`knn_search` (inner product = cosine on L2-normalised embeddings); the weights are
    ``softmax(similarity / temperature)`` over the ``k`` neighbours. ``spread=True`` also returns the
    neighbours' weighted standard deviation of each value (how much the spots the prediction rests on
    disagree: the basis of its uncertainty).
    """
    vals = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    require_finite("kNN reference values", vals)
    if vals.ndim != 2 or len(vals) != len(reference):
        raise MetricInputError(
            f"values {tuple(vals.shape)} must have one row per reference row ({len(reference)})"
        )
    sims, idx = knn_search(query, reference, k)
    top, idx = torch.from_numpy(sims), torch.from_numpy(idx)
    weights = torch.softmax(top / temperature, dim=1).unsqueeze(-1)
    neighbours = vals[idx]
    mean = (weights * neighbours).sum(dim=1)
    if not spread:
        return mean.numpy()
    var = (weights * (neighbours - mean.unsqueeze(1)) ** 2).sum(dim=1)
    return mean.numpy(), var.clamp_min(0).sqrt().numpy()


def mse_mae(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Mean squared and mean absolute error over all entries (e.g. spots x genes of log1p values)."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise MetricInputError(f"pred {pred.shape} and true {true.shape} must have the same shape")
    require_finite("predicted expression", pred)
    require_finite("measured expression", true)
    diff = pred - true
    return float(np.mean(diff**2)), float(np.mean(np.abs(diff)))


def cluster_agreement(labels_true, labels_pred) -> dict[str, float]:
    """Adjusted Rand index and normalised mutual information of two labelings (scikit-learn).

    Entries whose true label is missing (None/NaN) are left out.
    """
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = pd.Series(np.asarray(labels_true, dtype=object))
    p = pd.Series(np.asarray(labels_pred, dtype=object))
    if len(t) != len(p):
        raise ValueError(f"labels_true has {len(t)} entries, labels_pred {len(p)}")
    keep = ~(t.isna() | p.isna()).to_numpy()
    t = t[keep].astype(str).to_numpy()
    p = p[keep].astype(str).to_numpy()
    if len(t) == 0:
        return {"ari": float("nan"), "nmi": float("nan")}
    return {"ari": float(adjusted_rand_score(t, p)), "nmi": float(normalized_mutual_info_score(t, p))}
