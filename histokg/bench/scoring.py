"""Scores of one prediction on the held-out slides, with the protocol of ``histokg evaluate``.

Per held-out slide (never on pooled slides): Pearson per gene between predicted and measured
log1p CP10k (library size over all measured genes), averaged over the HEG-n and HVG-n genes of a
panel (chosen on the training slides) and over all panel genes; MSE over spots x panel genes; the
same Pearson for pathway activities (Hallmark and Reactome, KG activations); Recall@k image ->
expression and expression -> image with the whole slide as the candidate pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from histokg.metrics import chance_recall, mse_mae, pearson_per_gene, retrieval_recall


@dataclass
class Panel:
    """A gene panel of one fold: its genes and the positions of its HEG-n / HVG-n genes."""

    name: str
    genes: list[str]
    heg: np.ndarray
    hvg: np.ndarray


@dataclass
class Targets:
    """What is predicted for one fold: per panel the training values and each held-out slide's truth."""

    panels: dict[str, Panel]
    train_values: dict[str, np.ndarray]  # panel -> (n_train, genes) log1p CP10k
    test_values: dict[str, dict[str, np.ndarray]]  # panel -> slide -> (n_slide, genes)
    pathway_groups: dict[str, np.ndarray]  # group ("hallmark", "reactome") -> activation columns
    train_pathways: np.ndarray | None  # (n_train, entities)
    test_pathways: dict[str, np.ndarray]  # slide -> (n_slide, entities)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def gene_scores(pred: np.ndarray, true: np.ndarray, panel: Panel) -> dict[str, float]:
    r = pearson_per_gene(pred, true)
    mse, _ = mse_mae(pred, true)
    n = len(panel.heg)
    return {
        f"pearson_heg{n}": _nanmean(r[panel.heg]),
        f"pearson_hvg{n}": _nanmean(r[panel.hvg]),
        "pearson_all": _nanmean(r),
        "mse": mse,
    }


def pathway_scores(pred: np.ndarray, true: np.ndarray, groups: Mapping[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for name, cols in groups.items():
        if len(cols):
            out[f"pearson_{name}"] = _nanmean(pearson_per_gene(pred[:, cols], true[:, cols]))
    return out


def score_slide(
    predict,  # callable(values_train (n_train, m)) -> predictions (n_slide, m) for this slide
    targets: Targets,
    slide: str,
) -> dict[str, float]:
    """Every prediction metric of one held-out slide; ``predict`` maps training values to predictions."""
    out: dict[str, float] = {}
    for name, panel in targets.panels.items():
        pred = predict(targets.train_values[name])
        for key, value in gene_scores(pred, targets.test_values[name][slide], panel).items():
            out[f"{name}/{key}"] = value
    if targets.train_pathways is not None and targets.pathway_groups:
        pred = predict(targets.train_pathways)
        for key, value in pathway_scores(pred, targets.test_pathways[slide], targets.pathway_groups).items():
            out[f"pathway/{key}"] = value
    return out


def interval_scores(
    train_img: np.ndarray,
    train_expr: np.ndarray,
    groups: np.ndarray,
    test_img: np.ndarray,
    targets: Targets,
    slide: str,
    *,
    k: int,
    temperature: float,
    level: float = 0.9,
) -> dict[str, float]:
    """The kNN prediction's interval ``prediction +- z * neighbours' spread`` on the model panel, ``z``
    calibrated on the training slides for ``level`` (:func:`histokg.tl.predict.interval_scale`): how often
    the held-out slide's measured value falls inside (coverage; nominal ``level``) and the mean width."""
    from histokg.metrics import knn_predict
    from histokg.tl.predict import interval_scale

    values = targets.train_values["panel"]
    z = interval_scale(train_img, train_expr, values, groups, k=k, temperature=temperature, level=level)
    pred, sd = knn_predict(test_img, train_expr, values, k=k, temperature=temperature, spread=True)
    true = targets.test_values["panel"][slide]
    inside = np.abs(true - pred) <= z * np.maximum(sd, 1e-3)
    tag = f"interval{int(round(level * 100))}"
    return {
        f"{tag}/coverage": float(inside.mean()),
        f"{tag}/width": float((2 * z * sd).mean()),
        f"{tag}/z": z,
    }


def retrieval_scores(img: np.ndarray, expr: np.ndarray, k: int) -> dict[str, float]:
    i2e = retrieval_recall(img, expr, (k,))[k]
    e2i = retrieval_recall(expr, img, (k,))[k]
    return {f"recall@{k}_i2e": i2e, f"recall@{k}_e2i": e2i, f"chance@{k}": chance_recall(len(img), k)}


def summarise(
    rows: Sequence[dict], keys: Sequence[str], patients: Mapping[str, str] | None = None
) -> list[dict]:
    """Mean +- std over seeds per (method, test slide); per held-out patient ("patient:<P>", when a patient
    has several held-out slides: the mean over its slides of each seed); and per method over all slides
    ("all": the mean over slides of each seed, then mean +- std of those over seeds)."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["slide"]), {})[row["seed"]] = row
    out = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    slides = list(dict.fromkeys(r["slide"] for r in rows))
    sets: dict[str, list[str]] = {s: [s] for s in slides}
    by_patient: dict[str, list[str]] = {}
    for s in slides:
        if patients and s in patients:
            by_patient.setdefault(patients[s], []).append(s)
    sets.update({f"patient:{p}": ss for p, ss in by_patient.items() if len(ss) > 1})
    sets["all"] = slides
    for method in methods:
        kind = next(r.get("kind") for r in rows if r["method"] == method)
        for name, members in sets.items():
            per_seed: dict[int, list[dict]] = {}
            for s in members:
                for seed, row in groups.get((method, s), {}).items():
                    per_seed.setdefault(seed, []).append(row)
            if not per_seed:
                continue
            values = {
                key: [_nanmean([r["metrics"].get(key, np.nan) for r in rs]) for rs in per_seed.values()]
                for key in keys
            }
            entry = {"method": method, "slide": name, "n_seeds": len(per_seed)}
            for key, vals in values.items():
                arr = np.asarray(vals, dtype=np.float64)
                arr = arr[np.isfinite(arr)]
                entry[key] = {
                    "mean": float(arr.mean()) if arr.size else None,
                    "std": float(arr.std()) if arr.size else None,
                }
            entry["kind"] = kind
            out.append(entry)
    return out
