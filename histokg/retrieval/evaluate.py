"""Retrieval evaluation as SISH (Chen et al. 2022), Yottixel (Kalra et al. 2020) and RetCCL (Wang et
al. 2023) report it, with slide labels as relevance.

For every query slide, the candidates are all other slides, minus the query's patient when patients
are known (leave-one-patient-out; otherwise leave-one-slide-out). Candidates are ranked by cosine
similarity of slide descriptors.

- ``mMV@5``: majority vote of the top-5 labels (ties go to the label whose best hit ranks highest)
  equals the query's label; accuracy per label, then averaged over labels (macro, "m"). ``MV@5`` is
  the plain (micro) accuracy.
- ``mAP``: mean over queries of the average precision of the whole ranking (relevant = same label);
  queries with no relevant candidate are left out and counted in ``n_without_relevant``.
- ``hit@k``: a same-label slide is among the top k (k = 1, 3, 5).

:func:`region_retrieval_metrics` does the same for regions with region labels (e.g. her2st
expression clusters, the synthetic ground truth), retrieving only from other slides.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import numpy as np

from histokg.errors import InputError

HIT_KS = (1, 3, 5)


def _vote(labels: Sequence[str]) -> str:
    counts = collections.Counter(labels)
    top = max(counts.values())
    for lab in labels:  # rank order breaks ties
        if counts[lab] == top:
            return lab
    raise AssertionError("unreachable")


def average_precision(relevant: np.ndarray) -> float:
    """AP of a ranked boolean relevance vector."""
    relevant = np.asarray(relevant, bool)
    if not relevant.any():
        return float("nan")
    hits = np.cumsum(relevant)
    ranks = np.flatnonzero(relevant) + 1
    return float(np.mean(hits[relevant] / ranks))


def retrieval_metrics(
    descriptors: np.ndarray,
    labels: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    patients: Sequence[str | None] | None = None,
    vote_k: int = 5,
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Leave-one-out retrieval metrics of L2-normalised ``descriptors`` with ``labels`` as relevance.

    ``groups`` (e.g. slide ids) and ``patients`` exclude the query's own group and patient from its
    candidates (``None`` patients are unknown and exclude nothing). ``similarity(a, b)``: the
    (len(a), len(b)) similarities of descriptor rows (a descriptor's
    :meth:`~histokg.retrieval.descriptors.SlideDescriptor.similarity`; default: inner product).
    """
    x = np.asarray(descriptors, np.float64)
    labels = np.asarray([str(lab) for lab in labels])
    n = len(labels)
    if x.ndim != 2 or len(x) != n:
        raise InputError(f"descriptors {x.shape} and {n} labels do not match")
    if n < 2:
        raise InputError("retrieval evaluation needs at least 2 items")
    groups = np.asarray(groups if groups is not None else np.arange(n)).astype(str)
    pats = (
        np.asarray([p if p not in (None, "") else f"\0{i}" for i, p in enumerate(patients)])
        if patients is not None
        else None
    )
    sims = similarity(x, x) if similarity is not None else x @ x.T
    per_label: dict[str, list[bool]] = collections.defaultdict(list)
    aps, hits = [], {k: [] for k in HIT_KS}
    no_rel = 0
    for i in range(n):
        keep = groups != groups[i]
        if pats is not None:
            keep &= pats != pats[i]
        cand = np.flatnonzero(keep)
        if len(cand) == 0:
            continue
        order = cand[np.argsort(-sims[i, cand], kind="stable")]
        rel = labels[order] == labels[i]
        per_label[labels[i]].append(_vote(list(labels[order[:vote_k]])) == labels[i])
        ap = average_precision(rel)
        if np.isnan(ap):
            no_rel += 1
        else:
            aps.append(ap)
        for k in HIT_KS:
            hits[k].append(bool(rel[:k].any()))
    if not per_label:
        raise InputError("no query has a candidate left after leaving out its slide and patient")
    votes = [v for vs in per_label.values() for v in vs]
    out = {
        f"mMV@{vote_k}": float(np.mean([np.mean(v) for v in per_label.values()])),
        f"MV@{vote_k}": float(np.mean(votes)),
        "mAP": float(np.mean(aps)) if aps else float("nan"),
        **{f"hit@{k}": float(np.mean(v)) for k, v in hits.items()},
        "n_queries": len(votes),
        "n_without_relevant": no_rel,
        "per_label_MV": {str(lab): float(np.mean(v)) for lab, v in sorted(per_label.items())},
        "protocol": "leave-one-patient-out"
        if patients is not None and any(p not in (None, "") for p in patients)
        else "leave-one-slide-out",
    }
    return out


def slide_retrieval_metrics(
    index, *, label: str, descriptor: str = "mean", use_patients: bool = True, vote_k: int = 5
) -> dict:
    """:func:`retrieval_metrics` over the slides of an index that carry slide label ``label``."""
    ids, mat = index.descriptors(descriptor)
    keep = [i for i, s in enumerate(ids) if label in index.slide_meta(s).get("labels", {})]
    if len(keep) < 2:
        raise InputError(f"fewer than 2 slides carry the label {label!r}")
    metas = [index.slide_meta(ids[i]) for i in keep]
    patients = [m.get("patient") for m in metas] if use_patients else None
    out = retrieval_metrics(
        mat[keep],
        [m["labels"][label] for m in metas],
        groups=[ids[i] for i in keep],
        patients=patients,
        vote_k=vote_k,
        similarity=index.descriptor(descriptor).similarity,
    )
    out.update(descriptor=descriptor, label=label, n_slides=len(keep))
    return out


def region_retrieval_metrics(
    index,
    *,
    max_queries_per_slide: int = 200,
    seed: int = 0,
    vote_k: int = 5,
    slides: Sequence[str] | None = None,
) -> dict:
    """Region-level leave-one-slide-out retrieval over regions with labels (exact search)."""
    rng = np.random.default_rng(seed)
    vecs, labs, groups, query_mask = [], [], [], []
    for sid in slides or index.slide_ids:
        shard = index.shard(sid)
        if shard.labels is None:
            continue
        vecs.append(shard.vectors)
        labs.append(shard.labels.astype(str))
        groups.append(np.full(len(shard), sid))
        m = np.zeros(len(shard), bool)
        m[rng.choice(len(shard), min(len(shard), max_queries_per_slide), replace=False)] = True
        query_mask.append(m)
    if len(vecs) < 2:
        raise InputError("region retrieval needs at least 2 slides with region labels")
    x, lab, grp = np.concatenate(vecs), np.concatenate(labs), np.concatenate(groups)
    qm = np.concatenate(query_mask)
    per_label: dict[str, list[bool]] = collections.defaultdict(list)
    hits = {k: [] for k in HIT_KS}
    for i in np.flatnonzero(qm):
        cand = np.flatnonzero(grp != grp[i])
        top = cand[np.argsort(-(x[cand] @ x[i]), kind="stable")[: max(vote_k, max(HIT_KS))]]
        rel = lab[top] == lab[i]
        per_label[lab[i]].append(_vote(list(lab[top[:vote_k]])) == lab[i])
        for k in HIT_KS:
            hits[k].append(bool(rel[:k].any()))
    votes = [v for vs in per_label.values() for v in vs]
    chance = {str(lb): float(np.mean(lab == lb)) for lb in per_label}
    return {
        f"mMV@{vote_k}": float(np.mean([np.mean(v) for v in per_label.values()])),
        f"MV@{vote_k}": float(np.mean(votes)),
        **{f"hit@{k}": float(np.mean(v)) for k, v in hits.items()},
        "n_queries": len(votes),
        "label_frequency": chance,
        "protocol": "regions, leave-one-slide-out, exact search",
    }
