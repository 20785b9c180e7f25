"""Held-out evaluation of an embedded study: expression prediction, cross-modal retrieval, clustering.

:func:`evaluate` scores held-out slides against reference slides; :mod:`histokg.heldout` runs it on an
embedded AnnData or a checkpoint and writes the results, predictions and report (``histokg evaluate``).

Protocol (also written into every result under ``"protocol"``):

- **Split.** ``reference`` = the training slides, ``heldout`` = slides the model never saw. They must
  not share a library. Everything that is fitted or chosen (kNN database, ridge probe, gene sets) uses
  the reference only.
- **Genes.** Predictions cover the model's panel (``uns["histokg"]["params"]["genes"]``, else the genes
  both share). Pearson is reported over the top ``n_top`` highly expressed genes (HEG, mean log1p
  CP10k) and highly variable genes (HVG, variance of log1p CP10k), both chosen on the reference
  slides, and over all panel genes.
- **Normalisation.** ``log1p(counts / total * 1e4)`` per spot, library size over all measured genes;
  MSE and MAE on these values.
- **Retrieval.** Recall@k image -> expression and expression -> image, with the *whole held-out slide*
  as the candidate pool (not a training batch); chance = k / n_spots.
- **Clustering.** Leiden (scanpy, igraph flavour) on each held-out slide's image embeddings, ARI and
  NMI against ``obs[label_key]`` where it exists.
- **Averaging.** Every metric is computed per held-out slide, then averaged across slides (unweighted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from histokg import keys
from histokg.errors import InputError
from histokg.keys import Key
from histokg.metrics import (
    chance_recall,
    cluster_agreement,
    mse_mae,
    pearson_per_gene,
    retrieval_recall,
)
from histokg.pp import top_genes
from histokg.tl.predict import (
    METHODS,
    has_counts,
    panel_adata,
    panel_genes,
    predict_expression,
    reference_params,
)

log = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)


def evaluate(
    reference: ad.AnnData,
    heldout: ad.AnnData,
    *,
    methods: Sequence[str] = ("knn", "ridge"),
    n_top: int = 50,
    k: int | None = None,
    alpha: float | None = None,
    temperature: float = 0.1,
    smooth: float = 0.0,
    label_key: str | None = Key.obs.region,
    library_key: str = Key.obs.library_id,
    genes: Sequence[str] | None = None,
    use_rep: str = keys.IMAGE,
    expr_rep: str | None = None,
    layer: str = Key.layers.counts,
    ks: Sequence[int] = RECALL_KS,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    random_state: int = 0,
    return_panel: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], ad.AnnData]:
    """Evaluate embeddings of ``heldout`` slides against a ``reference`` (training) set.

    Returns a dict with ``protocol``, ``genes`` (panel, HEG, HVG), ``slides`` (metrics per held-out
    slide), ``summary`` (mean over slides), ``per_gene_pearson`` ({method: {slide: array over the
    panel}}) and ``timing_s``. With ``return_panel`` also the panel AnnData of the held-out spots
    (measured ``X``, ``layers[f"pred_{method}"]``) for plotting (:mod:`histokg.report`).

    ``methods``: any of ``knn``, ``ridge``, ``blend`` (their mean); ``smooth`` > 0 smooths every
    prediction over each held-out slide's spot graph (:func:`histokg.tl.predict_expression`). ``k`` and
    ``alpha`` None: chosen once on the reference alone (:func:`histokg.tl.predict.reference_params`), recorded
    in ``protocol["chosen"]``.
    """
    start = time.perf_counter()
    expr_rep = expr_rep or keys.expr_key(use_rep)
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"evaluate: unknown methods {bad}; choose from {list(METHODS)}")
    ref_libs, held_libs = _split(reference, heldout, library_key)
    _require(heldout, use_rep, "held-out")
    if methods and not has_counts(heldout, layer):
        raise InputError(
            f"evaluate: held-out layers[{layer!r}] (measured counts) is missing, so predictions cannot be scored; "
            "pass methods=() to evaluate retrieval and clustering only"
        )
    if methods and layer not in reference.layers:
        raise InputError(f"evaluate: reference layers[{layer!r}] (raw counts) is missing")
    genes = [str(g) for g in genes] if genes is not None else panel_genes(reference, heldout)
    heg = top_genes(reference, n_top, "mean", genes=genes, layer=layer) if methods else []
    hvg = top_genes(reference, n_top, "variance", genes=genes, layer=layer) if methods else []

    chosen = None
    if methods and (k is None or alpha is None):
        chosen = reference_params(
            reference, use_rep, expr_rep, genes=genes, layer=layer, temperature=temperature
        )
        k = chosen["k"] if k is None else k
        alpha = chosen["alpha"] if alpha is None else alpha
    # the held-out spots over the panel (measured X); each method's prediction lands in its layers
    panel = panel_adata(heldout, genes, layer=layer, predictions=False) if methods else None
    for method in methods:
        log.info(
            "predicting %d panel genes of %d held-out spots with %s (reference: %d spots)",
            len(genes),
            heldout.n_obs,
            method,
            reference.n_obs,
        )
        predict_expression(
            panel,
            reference,
            method=method,
            genes=genes,
            k=k,
            alpha=alpha,
            temperature=temperature,
            use_rep=use_rep,
            ref_rep=expr_rep,
            layer=layer,
            smooth=smooth,
            key_added=keys.pred_key(method),
        )
    if expr_rep not in heldout.obsm:
        log.warning("evaluate: held-out obsm[%r] is missing; cross-modal retrieval is skipped", expr_rep)
    opts = {
        "methods": methods,
        "n_top": n_top,
        "k": k,
        "alpha": alpha,
        "chosen": chosen or {},
        "temperature": temperature,
        "smooth": smooth,
        "label_key": label_key if label_key is not None and label_key in heldout.obs else None,
        "use_rep": use_rep,
        "expr_rep": expr_rep,
        "ks": [int(q) for q in ks],
        "n_neighbors": n_neighbors,
        "resolution": resolution,
        "random_state": random_state,
    }
    pos = {g: i for i, g in enumerate(genes)}
    gene_sets = {"heg": [pos[g] for g in heg], "hvg": [pos[g] for g in hvg]}
    libs = heldout.obs[library_key].astype(str).to_numpy()
    slides: dict[str, dict] = {}
    per_gene: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    for lib in tqdm(held_libs, desc="scoring held-out slides", unit="slide", disable=len(held_libs) < 2):
        log.info("scoring held-out slide %s (%d spots)", lib, int((libs == lib).sum()))
        slides[lib] = _score_slide(heldout, panel, libs == lib, gene_sets, opts, per_gene, lib)

    results = {
        "protocol": _protocol(ref_libs, held_libs, genes, opts, panel_source(reference)),
        "genes": {"panel": list(genes), "heg": heg, "hvg": hvg},
        "n_spots": {
            "reference": int(reference.n_obs),
            "heldout": {lib: slides[lib]["n_spots"] for lib in held_libs},
        },
        "slides": slides,
        "summary": _average([slides[lib] for lib in held_libs]),
        "per_gene_pearson": per_gene,
        "timing_s": round(time.perf_counter() - start, 3),
    }
    log.info("evaluated %d held-out slide(s) against %d reference slide(s)", len(held_libs), len(ref_libs))
    if not return_panel:
        return results
    if panel is None:
        panel = panel_adata(
            heldout, genes if has_counts(heldout, layer) else [], layer=layer, predictions=False
        )
    return results, panel


def panel_source(reference: ad.AnnData) -> str:
    """Where the evaluated genes come from, in words."""
    info = reference.uns.get(Key.uns.histokg)
    params = info.get(Key.histokg.params) if isinstance(info, dict) else None
    if isinstance(params, dict) and params.get(Key.params.genes) is not None:
        return "model panel (uns['histokg']['params']['genes'])"
    return "genes shared by reference and held-out"


# --------------------------------------------------------------------------- pieces


def _score_slide(heldout, panel, mask, gene_sets, opts: dict, per_gene: dict, lib: str) -> dict[str, Any]:
    """Every metric of one held-out slide; per-gene Pearson arrays go into ``per_gene[method][lib]``."""
    entry: dict[str, Any] = {"n_spots": int(mask.sum())}
    if opts["methods"]:
        entry["prediction"] = {}
        true = np.asarray(panel.X[mask], dtype=np.float64)
        for method in opts["methods"]:
            pred = np.asarray(panel.layers[keys.pred_key(method)][mask], dtype=np.float64)
            r = pearson_per_gene(pred, true)
            per_gene[method][lib] = r
            entry["prediction"][method] = _prediction_metrics(
                r, pred, true, gene_sets["heg"], gene_sets["hvg"]
            )
    if opts["expr_rep"] in heldout.obsm:
        entry["retrieval"] = _retrieval(heldout, mask, opts["use_rep"], opts["expr_rep"], opts["ks"])
    if opts["label_key"] is not None:
        entry["clustering"] = _clustering(
            heldout[mask],
            opts["label_key"],
            opts["use_rep"],
            opts["expr_rep"],
            opts["n_neighbors"],
            opts["resolution"],
            opts["random_state"],
        )
    return entry


def _split(reference: ad.AnnData, heldout: ad.AnnData, library_key: str) -> tuple[list[str], list[str]]:
    for name, a in (("reference", reference), ("held-out", heldout)):
        if library_key not in a.obs:
            raise InputError(f"evaluate: {name} obs[{library_key!r}] is missing")
        if a.n_obs == 0:
            raise InputError(f"evaluate: the {name} AnnData has no spots")
    ref_libs = sorted(map(str, pd.unique(reference.obs[library_key].astype(str))))
    held_libs = sorted(map(str, pd.unique(heldout.obs[library_key].astype(str))))
    shared = sorted(set(ref_libs) & set(held_libs))
    if shared:
        raise InputError(
            f"evaluate: slides {shared} are both reference (training) and held-out; held-out slides must be unseen"
        )
    overlap = reference.obs_names.intersection(heldout.obs_names)
    if len(overlap):
        raise InputError(
            f"evaluate: {len(overlap)} spot ids are in both reference and held-out, e.g. {overlap[0]!r}"
        )
    return ref_libs, held_libs


def _require(adata: ad.AnnData, rep: str, who: str) -> None:
    if rep not in adata.obsm:
        raise InputError(
            f"evaluate: {who} obsm[{rep!r}] is missing (obsm has {list(adata.obsm.keys())}); embed the slides first"
        )


def _prediction_metrics(
    r: np.ndarray, pred: np.ndarray, true: np.ndarray, heg_idx, hvg_idx
) -> dict[str, float]:
    mse, mae = mse_mae(pred, true)
    return {
        "pearson_heg": _nanmean(r[heg_idx]),
        "pearson_hvg": _nanmean(r[hvg_idx]),
        "pearson_all": _nanmean(r),
        "mse": mse,
        "mae": mae,
        "n_genes_constant": int(np.isnan(r).sum()),  # measured constant on the slide: no r, left out
    }


def _retrieval(adata: ad.AnnData, mask: np.ndarray, use_rep: str, expr_rep: str, ks: Sequence[int]) -> dict:
    img = _unit(np.asarray(adata.obsm[use_rep], dtype=np.float32)[mask])
    expr = _unit(np.asarray(adata.obsm[expr_rep], dtype=np.float32)[mask])
    if img.shape[1] != expr.shape[1]:
        raise InputError(
            f"evaluate: obsm[{use_rep!r}] ({img.shape[1]} dims) and obsm[{expr_rep!r}] ({expr.shape[1]}) differ in width"
        )
    n = len(img)
    i2e = retrieval_recall(img, expr, ks)
    e2i = retrieval_recall(expr, img, ks)
    return {
        "image_to_expression": {f"R@{q}": float(i2e[q]) for q in ks},
        "expression_to_image": {f"R@{q}": float(e2i[q]) for q in ks},
        "chance": {f"R@{q}": chance_recall(n, q) for q in ks},
        "pool_size": n,
    }


def _clustering(
    sub: ad.AnnData,
    label_key: str,
    use_rep: str,
    expr_rep: str,
    n_neighbors: int,
    resolution: float,
    seed: int,
) -> dict:
    from histokg.tl.analysis import cluster

    out: dict[str, Any] = {}
    labels = sub.obs[label_key]
    for name, rep in (("image", use_rep), ("expression", expr_rep)):
        if rep not in sub.obsm or sub.n_obs < 5:
            continue
        tmp = ad.AnnData(obs=pd.DataFrame(index=sub.obs_names.copy()))
        tmp.obsm[rep] = np.asarray(sub.obsm[rep], dtype=np.float32)
        cluster(
            tmp,
            use_rep=rep,
            n_neighbors=n_neighbors,
            resolution=resolution,
            umap=False,
            random_state=seed,
            key_added="c",
        )
        agreement = cluster_agreement(labels.to_numpy(), tmp.obs["c"].to_numpy())
        out[name] = {**agreement, "n_clusters": int(tmp.obs["c"].nunique())}
    out["n_labels"] = int(labels.nunique())
    return out


def _protocol(ref_libs, held_libs, genes, opts: dict, source: str) -> dict:
    k, alpha, temperature = opts["k"], opts["alpha"], opts["temperature"]
    use_rep, expr_rep, n_top, label_key = opts["use_rep"], opts["expr_rep"], opts["n_top"], opts["label_key"]
    methods = opts["methods"]
    prediction = {}
    if "knn" in methods:
        prediction["knn"] = (
            f"BLEEP-style retrieval: the {k} reference spots whose expression embedding obsm[{expr_rep!r}] is most "
            f"cosine-similar to the query's image embedding obsm[{use_rep!r}]; softmax(sim / {temperature}) "
            "weighted mean of their log1p CP10k expression"
        )
    if "ridge" in methods:
        prediction["ridge"] = (
            f"linear probe: sklearn Ridge(alpha={alpha}) from the reference's image embeddings obsm[{use_rep!r}] "
            "to its log1p CP10k expression, applied to the held-out image embeddings"
        )
    if "blend" in methods:
        prediction["blend"] = "the mean of the knn and ridge predictions above"
    if opts["smooth"]:
        prediction["smoothing"] = (
            f"every prediction becomes (1 - {opts['smooth']}) x its own + {opts['smooth']} x the mean of its "
            "spatial neighbours' on the held-out slide's spot graph (squidpy spatial_neighbors)"
        )
    return {
        "split": {
            "reference": list(ref_libs),
            "heldout": list(held_libs),
            "note": "reference = training slides; held-out slides are used only to score predictions",
        },
        "genes": {
            "panel": f"{len(genes)} genes: {source}",
            "heg": f"top {n_top} panel genes by mean log1p CP10k on the reference (training) slides only",
            "hvg": f"top {n_top} panel genes by variance of log1p CP10k on the reference (training) slides only",
        },
        "normalisation": "log1p(counts / total counts * 1e4) per spot (log1p CP10k, library size over all measured "
        "genes); MSE and MAE on these values",
        "pooling": "retrieval candidate pool = all spots of the held-out slide (not a batch); chance Recall@k = k / n",
        "recall_ks": opts["ks"],
        "prediction": {
            "methods": list(methods),
            "k": int(k) if k is not None else None,
            "alpha": float(alpha) if alpha is not None else None,
            "temperature": float(temperature),
            "smooth": float(opts["smooth"]),
            **({"chosen": opts["chosen"]} if opts.get("chosen") else {}),
            **prediction,
        },
        "clustering": (
            f"Leiden (igraph) on each held-out slide's image embeddings vs obs[{label_key!r}]: ARI, NMI"
            if label_key
            else "skipped (no label_key)"
        ),
        "averaging": "metrics computed per held-out slide, then averaged across slides (unweighted mean)",
    }


def _average(entries: list[dict]) -> dict:
    """Mean over slides of every numeric leaf (NaN-aware); ``n_slides`` counts them."""

    def merge(items: list[Any]) -> Any:
        dicts = [x for x in items if isinstance(x, dict)]
        if dicts:
            keys = list(dict.fromkeys(key for d in dicts for key in d))
            return {key: merge([d[key] for d in dicts if key in d]) for key in keys}
        nums = [float(x) for x in items if isinstance(x, (int, float, np.floating, np.integer))]
        return _nanmean(np.asarray(nums)) if nums else None

    out = merge(entries) if entries else {}
    out["n_slides"] = len(entries)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
