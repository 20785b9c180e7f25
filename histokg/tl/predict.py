"""Expression prediction from H&E alone, written into the query AnnData (scanpy style).

Two predictors, both fitted on a *reference* AnnData (the training slides) and applied to the image
embeddings of a *query* (held-out slides, or slides without expression):

- ``knn`` (BLEEP-style retrieval): for each query spot, the ``k`` reference spots whose *expression*
  embedding is closest (cosine, exact search with faiss: :func:`histokg.metrics.knn_search`) to the
  query's *image* embedding; the prediction is their softmax(similarity / temperature)-weighted mean
  log1p CP10k expression.
- ``ridge`` (HEST-Benchmark-style linear probe): scikit-learn ``Ridge`` fitted on the reference's image
  embeddings -> its log1p CP10k expression, applied to the query's image embeddings.

Expression is ``log1p(counts / total * 1e4)`` with the library size over all measured genes, then
restricted to the gene panel (:func:`histokg.pp.panel_log1p`).

Where a prediction lands: ``layers[key]`` when the panel is the query's ``var`` (in order), else
``obsm[key]`` as a DataFrame over the panel genes; ``uns["histokg"]["prediction"][key]`` says which,
with the method, its parameters and the checkpoint's hash. :func:`panel_adata` gives the panel view
(measured ``X``, predictions as layers) that plots and ``predicted.h5ad`` use.
"""

from __future__ import annotations

import copy as _copy
import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg import keys, pp
from histokg.errors import InputError
from histokg.keys import Key
from histokg.metrics import knn_predict
from histokg.pp import log1p_cp10k, panel_columns, take_columns

log = logging.getLogger(__name__)

METHODS = ("knn", "ridge", "blend")
_QUERY_CHUNK = 4096


def panel_genes(reference: ad.AnnData, query: ad.AnnData | None = None) -> list[str]:
    """The model's gene panel (``reference.uns["histokg"]["params"]["genes"]``), else the shared genes."""
    info = reference.uns.get(Key.uns.histokg)
    params = info.get(Key.histokg.params) if isinstance(info, dict) else None
    genes = params.get(Key.params.genes) if isinstance(params, dict) else None
    if genes is not None and len(genes) > 0:
        return [str(g) for g in np.asarray(genes).ravel()]
    ref_genes = [str(g) for g in reference.var_names]
    if query is None or query.n_vars == 0:
        return ref_genes
    shared = set(map(str, query.var_names))
    return [g for g in ref_genes if g in shared]


def has_counts(adata: ad.AnnData, layer: str | None = Key.layers.counts) -> bool:
    """Whether ``adata`` carries measured expression in ``layer`` (or in ``X`` when ``layer`` is None)."""
    if adata.n_vars == 0:
        return False
    return (layer in adata.layers) if layer else adata.X is not None


def panel_log1p(
    adata: ad.AnnData, genes: Sequence[str], *, layer: str | None = Key.layers.counts, what: str = "data"
) -> np.ndarray:
    """Dense float32 log1p CP10k of ``genes`` (library size over all genes of the spot); panel genes the
    data lacks are measured zeros (:func:`histokg.pp.panel_log1p`); a reference needs its counts layer."""
    _counts(adata, layer, what)  # a reference without raw counts is refused here
    return pp.panel_log1p(adata, genes, layer, source=what)


def predict_expression(
    adata: ad.AnnData,
    reference: ad.AnnData,
    *,
    method: str = "knn",
    genes: Sequence[str] | None = None,
    k: int | None = None,
    alpha: float | None = None,
    temperature: float = 0.1,
    use_rep: str = keys.IMAGE,
    ref_rep: str | None = None,
    layer: str | None = Key.layers.counts,
    smooth: float = 0.0,
    key_added: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Predict the expression of ``genes`` for the spots of ``adata`` from their image embeddings.

    Writes the prediction (log1p CP10k, float32) under ``key = key_added or f"pred_{method}"``:

    - ``adata.layers[key]`` when ``genes`` are ``adata.var_names`` in order (a panel AnnData, or a
      query measured on exactly the panel): squidpy plots it with ``layer=key``;
    - otherwise ``adata.obsm[key]``, a DataFrame (index ``obs_names``, columns ``genes``), since the
      panel is not ``var`` (a query with more genes than the panel, or with none).

    ``uns["histokg"]["prediction"][key]`` records the method and its parameters, where it went
    (``"where"``: ``"layers"`` or ``"obsm"``; ``"genes"`` for obsm), the reference slides and the
    checkpoint hash. :func:`predicted` reads a prediction back as a DataFrame wherever it is;
    :func:`panel_adata` turns the predictions into layers of a panel AnnData (measured ``X``) for
    plots and ``predicted.h5ad``. ``copy=True`` returns a new AnnData and leaves ``adata`` alone;
    otherwise ``adata`` is modified and None returned.

    ``method="knn"``: query ``obsm[use_rep]`` (image) against ``reference.obsm[ref_rep]`` (expression;
    default ``use_rep + "_expr"``, what :func:`histokg.tl.embed` writes beside ``use_rep``),
    cosine, ``k`` neighbours, softmax(sim / ``temperature``) weights. ``method="ridge"``: ``Ridge(alpha)``
    from ``reference.obsm[use_rep]`` to the reference's expression (raw counts in ``layers[layer]``).
    ``method="blend"``: the mean of the two. ``k`` or ``alpha`` None (the default): chosen on the
    reference alone, each of its slides predicted from the others (:func:`choose_params`; the choice and
    its scores go into the record). ``smooth`` > 0: each spot's prediction becomes
    ``(1 - smooth) * its own + smooth * the mean of its spatial neighbours'`` on the squidpy spot graph of
    ``adata`` (:func:`histokg.tl.spatial_graph`, built per library if ``obsp`` has none;
    :func:`smooth_values`). ``genes`` defaults to the panel in ``reference.uns["histokg"]["params"]["genes"]``, else all genes
    shared by both. Embeddings of two different checkpoints are refused.
    """
    if method not in METHODS:
        raise InputError(f"predict_expression: method={method!r} is not one of {', '.join(METHODS)}")
    if k is not None and k < 1:
        raise InputError(f"predict_expression: k must be >= 1, got {k}")
    if not 0.0 <= smooth <= 1.0:
        raise InputError(f"predict_expression: smooth must be in [0, 1], got {smooth}")
    name = key_added or keys.pred_key(method)
    ref_rep = ref_rep or keys.expr_key(use_rep)
    genes = [str(g) for g in genes] if genes is not None else panel_genes(reference, adata)
    if not genes:
        raise InputError(
            "predict_expression: the reference and the query share no genes and the reference has no panel in "
            "uns['histokg']['params']['genes']; pass genes=[...]"
        )
    if len(set(genes)) != len(genes):
        raise InputError("predict_expression: genes has duplicates")
    checkpoint = same_checkpoint(adata, reference)
    query_emb = _embedding(adata, use_rep, "query")
    ref_values = panel_log1p(reference, genes, layer=layer, what="reference")
    params: dict = {}
    parts = []
    if (k is None and method != "ridge") or (alpha is None and method != "knn"):
        choice = reference_params(reference, use_rep, ref_rep, ref_values, temperature=temperature)
        k = choice["k"] if k is None else k
        alpha = choice["alpha"] if alpha is None else alpha
        params["chosen"] = choice
    if method in ("knn", "blend"):
        ref_emb = _embedding(reference, ref_rep, "reference")
        _same_width(query_emb, ref_emb, use_rep, ref_rep)
        parts.append(_knn(query_emb, ref_emb, ref_values, k=k, temperature=temperature))
        params.update({"k": int(min(k, reference.n_obs)), "temperature": float(temperature)})
    if method in ("ridge", "blend"):
        ref_emb = _embedding(reference, use_rep, "reference")
        _same_width(query_emb, ref_emb, use_rep, use_rep)
        parts.append(_ridge(query_emb, ref_emb, ref_values, alpha=alpha))
        params["alpha"] = float(alpha)
    pred = parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2
    if smooth > 0:
        pred = smooth_values(pred, spot_graph(adata), smooth)
        params["smooth"] = float(smooth)
    record = {
        Key.prediction.method: method,
        Key.prediction.params: params,
        Key.prediction.use_rep: use_rep,
        Key.prediction.ref_rep: use_rep if method == "ridge" else ref_rep,
        Key.prediction.reference_libraries: _libraries(reference),
        Key.prediction.reference_n_spots: int(reference.n_obs),
        Key.prediction.checkpoint_sha256: checkpoint or "",
        Key.prediction.normalisation: "log1p CP10k (library size over all measured genes)",
    }
    adata = adata.copy() if copy else adata
    _store(adata, name, pred.astype(np.float32), genes, record)
    log.info(
        "predicted %d genes for %d spots with %s into %s",
        len(genes),
        adata.n_obs,
        method,
        _where(adata, name),
    )
    return adata if copy else None


def neighbour_spread(
    query: np.ndarray,
    reference: np.ndarray,
    values: np.ndarray,
    *,
    k: int = 10,
    temperature: float = 0.1,
) -> np.ndarray:
    """The weighted standard deviation of ``values`` over each query's ``k`` nearest reference rows (the kNN
    predictor's neighbours, :func:`histokg.metrics.knn_predict` with ``spread=True``), in query chunks."""
    chunks = [
        knn_predict(
            query[s : s + _QUERY_CHUNK], reference, values, k=k, temperature=temperature, spread=True
        )[1]
        for s in range(0, len(query), _QUERY_CHUNK)
    ]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, values.shape[1]), np.float32)


def predicted(adata: ad.AnnData, key: str) -> pd.DataFrame:
    """The prediction ``key`` of :func:`predict_expression` as a DataFrame (spots x genes)."""
    record = _records(adata).get(key)
    if record is None:
        raise InputError(
            f"uns['histokg']['prediction'] has no {key!r} (it has {sorted(_records(adata))}); "
            "run histokg.tl.predict_expression first"
        )
    if record.get(Key.prediction.where) == "obsm":
        if key not in adata.obsm:
            raise InputError(f"obsm[{key!r}] is missing though uns['histokg']['prediction'] records it")
        value = adata.obsm[key]
        if isinstance(value, pd.DataFrame):
            return value
        genes = [str(g) for g in np.asarray(record[Key.prediction.genes]).ravel()]
        return pd.DataFrame(np.asarray(value), index=adata.obs_names, columns=genes)
    if key not in adata.layers:
        raise InputError(f"layers[{key!r}] is missing though uns['histokg']['prediction'] records it")
    value = adata.layers[key]
    value = value.toarray() if sp.issparse(value) else np.asarray(value)
    return pd.DataFrame(value, index=adata.obs_names, columns=list(map(str, adata.var_names)))


def add_predictions(adata: ad.AnnData, panel: ad.AnnData) -> None:
    """Copy the predictions of ``panel`` (some spots of ``adata``, e.g. its held-out slides) into ``adata``.

    Spots are matched by ``obs_names``; spots ``panel`` lacks get NaN (not predicted: e.g. reference
    slides, whose in-sample prediction would echo their own measurement). Stored as
    :func:`predict_expression` stores them; the record gains ``n_predicted`` (spots with a prediction).
    """
    missing = panel.obs_names.difference(adata.obs_names)
    if len(missing):
        raise InputError(f"add_predictions: {len(missing)} panel spots are not in adata, e.g. {missing[0]!r}")
    rows = adata.obs_names.get_indexer(panel.obs_names)
    for name, record in _records(panel).items():
        frame = predicted(panel, name)
        values = np.full((adata.n_obs, frame.shape[1]), np.nan, dtype=np.float32)
        values[rows] = frame.to_numpy(dtype=np.float32)
        record = {**record, Key.prediction.n_predicted: int(panel.n_obs)}
        _store(adata, name, values, list(map(str, frame.columns)), record)


def panel_adata(
    adata: ad.AnnData,
    genes: Sequence[str] | None = None,
    *,
    layer: str | None = Key.layers.counts,
    predictions: bool = True,
) -> ad.AnnData:
    """A new AnnData over ``genes`` for the spots of ``adata``; ``X`` = measured log1p CP10k when known.

    With ``predictions``, the predictions of :func:`predict_expression` recorded in ``adata`` that
    cover ``genes`` become ``layers[key]`` (when nothing is measured, ``X`` is the last of them);
    ``genes`` defaults to the genes of the last prediction. ``layers["counts"]`` holds the measured
    counts; panel genes a measured query lacks are measured zeros, listed in
    ``uns["histokg"]["absent_genes"]``.
    """
    records = _records(adata) if predictions else {}
    if genes is None:
        if not records:
            raise InputError("panel_adata: pass genes=[...] (adata holds no prediction to take them from)")
        genes = predicted(adata, list(records)[-1]).columns
    genes = [str(g) for g in genes]
    measured = has_counts(adata, layer)
    var = pd.DataFrame(index=pd.Index(genes, name=adata.var_names.name or "gene"))
    absent: list[str] = []
    if measured:
        cols = panel_columns(genes, adata.var_names, "query")
        absent = [g for g, c in zip(genes, cols, strict=True) if c < 0]
        counts = _counts(adata, layer, "query")
        X = take_columns(log1p_cp10k(counts), cols)
        raw = take_columns(counts, cols, dtype=counts.dtype)
        if Key.var.gene_ids in adata.var:
            ids = adata.var[Key.var.gene_ids].astype(object).where(adata.var[Key.var.gene_ids].notna(), "")
            var[Key.var.gene_ids] = ids.astype(str).reindex(genes).fillna("").to_numpy()
    else:
        X = np.zeros((adata.n_obs, len(genes)), dtype=np.float32)
    out = ad.AnnData(X=X, obs=adata.obs.copy(), var=var)
    if measured:
        out.layers[Key.layers.counts] = sp.csr_matrix(raw)
    for key, value in adata.obsm.items():
        # predictions are layers here, or left out
        if _records(adata).get(key, {}).get(Key.prediction.where) != "obsm":
            out.obsm[key] = value.copy()
    for key, value in adata.obsp.items():
        out.obsp[key] = value.copy()
    out.uns = _copy.deepcopy(dict(adata.uns))
    info = out.uns.get(Key.uns.histokg)
    info = dict(info) if isinstance(info, dict) else {}
    info[Key.histokg.panel] = list(genes)
    info[Key.histokg.measured] = bool(measured)
    info[Key.histokg.absent_genes] = absent
    info[Key.histokg.prediction] = {}
    out.uns[Key.uns.histokg] = info
    for name, record in records.items():
        frame = predicted(adata, name)
        if not set(genes) <= set(map(str, frame.columns)):
            log.info("panel_adata: prediction %r does not cover the panel, so it is left out", name)
            continue
        _store(out, name, frame[genes].to_numpy(dtype=np.float32), genes, record)
    return out


# --------------------------------------------------------------------------- helpers


def _records(adata: ad.AnnData) -> dict:
    """``uns["histokg"]["prediction"]``: one record per prediction, by key."""
    info = adata.uns.get(Key.uns.histokg)
    records = info.get(Key.histokg.prediction) if isinstance(info, dict) else None
    return dict(records) if isinstance(records, dict) else {}


def _store(adata: ad.AnnData, name: str, values: np.ndarray, genes: list[str], record: dict) -> None:
    """Write one prediction to ``layers`` (genes = var, in order) or ``obsm`` (a DataFrame), and its record."""
    record = {k: v for k, v in record.items() if k not in (Key.prediction.where, Key.prediction.genes)}
    if genes == list(map(str, adata.var_names)):
        if name in adata.obsm:
            del adata.obsm[name]
        adata.layers[name] = values
        record[Key.prediction.where] = "layers"
        info = adata.uns.get(Key.uns.histokg)
        if isinstance(info, dict) and Key.histokg.panel in info and not info.get(Key.histokg.measured, True):
            adata.X = values.copy()  # a panel AnnData of unmeasured spots shows the prediction in X
    else:
        if name in adata.layers:
            del adata.layers[name]
        adata.obsm[name] = pd.DataFrame(values, index=adata.obs_names.copy(), columns=pd.Index(genes))
        record.update({Key.prediction.where: "obsm", Key.prediction.genes: list(genes)})
    info = adata.uns.get(Key.uns.histokg)
    info = dict(info) if isinstance(info, dict) else {}
    info[Key.histokg.prediction] = {**_records(adata), name: record}
    adata.uns[Key.uns.histokg] = info


def _where(adata: ad.AnnData, name: str) -> str:
    return f"{_records(adata)[name][Key.prediction.where]}[{name!r}]"


def spot_graph(adata: ad.AnnData) -> sp.csr_matrix:
    """The spots' neighbour graph (``obsp["spatial_connectivities"]``, squidpy's, per library; built with
    :func:`histokg.tl.spatial_graph` on a light copy when ``adata`` has none)."""
    from histokg.tl.analysis import spatial_graph

    if Key.obsp.spatial_connectivities in adata.obsp:
        return sp.csr_matrix(adata.obsp[Key.obsp.spatial_connectivities])
    if adata.n_obs < 2:
        return sp.csr_matrix((adata.n_obs, adata.n_obs), dtype=np.float32)
    light = ad.AnnData(
        obs=adata.obs[[Key.obs.library_id]].copy(), obsm={Key.obsm.spatial: adata.obsm[Key.obsm.spatial]}
    )
    spatial_graph(light)
    return sp.csr_matrix(light.obsp[Key.obsp.spatial_connectivities])


def smooth_values(values: np.ndarray, connectivities, weight: float) -> np.ndarray:
    """``(1 - weight) * values + weight * (mean of each row's graph neighbours' values)``; a spot without
    neighbours keeps its own values."""
    a = sp.csr_matrix(connectivities, dtype=np.float64)
    a.data[:] = 1.0
    degree = np.asarray(a.sum(axis=1)).ravel()
    values = np.asarray(values, dtype=np.float64)
    mean = a @ values / np.maximum(degree, 1.0)[:, None]
    out = np.where(degree[:, None] > 0, (1 - weight) * values + weight * mean, values)
    return out.astype(np.float32)


def interval_scale(
    image: np.ndarray,
    expr: np.ndarray,
    values: np.ndarray,
    groups: np.ndarray,
    *,
    k: int = 10,
    temperature: float = 0.1,
    level: float = 0.9,
    method: str = "knn",
    alpha: float = 1.0,
) -> float:
    """The multiple ``z`` of the kNN neighbours' spread that makes ``prediction +- z * spread`` hold the
    measured value with probability ``level``, calibrated on the reference alone: each reference slide
    (``groups``; one slide: three contiguous blocks of it) is predicted from the others, and ``z`` is the
    ``level`` quantile of ``|measured - predicted| / spread`` over its spots and genes.

    ``image``: the reference's image embeddings (the queries), ``expr``: its expression embeddings (the
    kNN's reference). ``method`` "ridge" or "blend" calibrates the interval around that prediction
    (``Ridge(alpha)`` fitted on the other slides' image embeddings), still in units of the kNN neighbours'
    spread."""
    if method not in METHODS:
        raise InputError(f"interval_scale: method={method!r} is not one of {', '.join(METHODS)}")
    groups = inner_groups(groups)
    ratios = []
    for g in np.unique(groups):
        held = groups == g
        if held.all() or not held.any():
            continue
        pred, sd = knn_predict(
            image[held], expr[~held], values[~held], k=k, temperature=temperature, spread=True
        )
        if method in ("ridge", "blend"):
            ridge = _ridge(image[held], image[~held], values[~held], alpha=alpha)
            pred = ridge if method == "ridge" else (pred + ridge) / 2
        ratios.append((np.abs(values[held] - pred) / np.maximum(sd, 1e-3)).ravel())
    if not ratios:
        raise InputError("interval_scale: the reference needs at least two slides or three spots")
    return float(np.quantile(np.concatenate(ratios), level))


#: What :func:`choose_params` tries: kNN neighbours and ridge penalties.
K_GRID = (5, 10, 20, 40, 80, 160)
ALPHA_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
_CV_QUERIES = 2000  # held-out spots scored per inner fold (a random subset of larger libraries)


def reference_params(
    reference: ad.AnnData,
    use_rep: str = keys.IMAGE,
    ref_rep: str | None = None,
    values: np.ndarray | None = None,
    *,
    genes: Sequence[str] | None = None,
    layer: str | None = Key.layers.counts,
    temperature: float = 0.1,
) -> dict:
    """:func:`choose_params` on a reference AnnData: its image embeddings ``obsm[use_rep]``, expression
    embeddings ``obsm[ref_rep]`` (default ``use_rep + "_expr"``), log1p CP10k ``values`` of the panel
    (computed from ``layer`` when not given) and its slides (``obs["library_id"]``)."""
    ref_rep = ref_rep or keys.expr_key(use_rep)
    if values is None:
        genes = [str(g) for g in genes] if genes is not None else panel_genes(reference)
        values = panel_log1p(reference, genes, layer=layer, what="reference")
    image = _embedding(reference, use_rep, "reference")
    expr = _embedding(reference, ref_rep, "reference")
    choice = choose_params(image, expr, values, _library_ids(reference), temperature=temperature)
    log.info(
        "prediction parameters chosen on the reference (%s): k=%d, alpha=%g",
        choice["chosen_by"],
        choice["k"],
        choice["alpha"],
    )
    return choice


def _library_ids(adata: ad.AnnData) -> np.ndarray:
    if Key.obs.library_id in adata.obs:
        return adata.obs[Key.obs.library_id].astype(str).to_numpy()
    return np.zeros(adata.n_obs, dtype=int)


def inner_groups(groups: Sequence | np.ndarray) -> np.ndarray:
    """The inner folds of a reference: its slides (``groups``), or with a single slide three contiguous
    blocks of its spots."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        return np.arange(len(groups)) * 3 // max(len(groups), 1)
    return groups


def choose_params(
    image: np.ndarray,
    expr: np.ndarray,
    values: np.ndarray,
    groups: Sequence | np.ndarray,
    *,
    temperature: float = 0.1,
    ks: Sequence[int] = K_GRID,
    alphas: Sequence[float] = ALPHA_GRID,
) -> dict:
    """The kNN ``k`` and ridge ``alpha`` that predict the reference best from itself: each reference slide
    (``groups``, :func:`inner_groups`) is predicted from the others, with the grid's every ``k`` (query
    ``image`` embeddings against the others' ``expr`` embeddings) and every ``alpha`` (Ridge on the others'
    ``image`` embeddings); the score is the mean over held-out slides of the mean Pearson per gene of
    ``values``. Nothing but the reference is seen. Returns ``{"k", "alpha", "k_scores", "alpha_scores",
    "chosen_by"}``; ties go to the smaller ``k`` and the larger ``alpha`` (the simpler model)."""
    from histokg.metrics import knn_search, pearson_per_gene

    image = np.asarray(image, np.float32)
    expr = np.asarray(expr, np.float32)
    values = np.asarray(values, np.float32)
    labels = inner_groups(groups)
    folds = [g for g in np.unique(labels) if 0 < (labels == g).sum() < len(labels)]
    if not folds:
        raise InputError("choose_params: the reference needs at least two slides or three spots")
    ks = sorted({int(k) for k in ks})
    alphas = sorted({float(a) for a in alphas})
    k_scores = np.zeros(len(ks))
    a_scores = np.zeros(len(alphas))
    rng = np.random.default_rng(0)
    for g in folds:
        held = np.flatnonzero(labels == g)
        if len(held) > _CV_QUERIES:
            held = np.sort(rng.choice(held, _CV_QUERIES, replace=False))
        rest = labels != g
        truth = values[held]
        ref_values = values[rest]
        kmax = min(max(ks), int(rest.sum()))
        sims, idx = knn_search(image[held], expr[rest], kmax)
        for i, k in enumerate(ks):
            top = sims[:, : min(k, kmax)] / temperature
            w = np.exp(top - top.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            pred = np.einsum("qk,qkg->qg", w, ref_values[idx[:, : min(k, kmax)]])
            k_scores[i] += _mean_r(pearson_per_gene(pred, truth)) / len(folds)
        for i, a in enumerate(alphas):
            pred = _ridge(image[held], image[rest], ref_values, alpha=a)
            a_scores[i] += _mean_r(pearson_per_gene(pred, truth)) / len(folds)
    best_k = ks[int(np.flatnonzero(k_scores == k_scores.max())[0])]
    best_a = alphas[int(np.flatnonzero(a_scores == a_scores.max())[-1])]
    return {
        "k": int(best_k),
        "alpha": float(best_a),
        "k_scores": {str(k): round(float(v), 4) for k, v in zip(ks, k_scores, strict=True)},
        "alpha_scores": {f"{a:g}": round(float(v), 4) for a, v in zip(alphas, a_scores, strict=True)},
        "chosen_by": f"leave-one-reference-slide-out over {len(folds)} inner folds (mean Pearson per gene)",
    }


def _mean_r(r: np.ndarray) -> float:
    r = np.asarray(r, np.float64)
    r = r[np.isfinite(r)]
    return float(r.mean()) if r.size else 0.0


def _knn(query: np.ndarray, ref: np.ndarray, values: np.ndarray, *, k: int, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise InputError(f"predict_expression: temperature must be > 0, got {temperature}")
    chunks = [
        knn_predict(query[s : s + _QUERY_CHUNK], ref, values, k=k, temperature=temperature)
        for s in range(0, len(query), _QUERY_CHUNK)
    ]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, values.shape[1]), np.float32)


def _ridge(query: np.ndarray, ref: np.ndarray, values: np.ndarray, *, alpha: float) -> np.ndarray:
    from sklearn.linear_model import Ridge

    if alpha < 0:
        raise InputError(f"predict_expression: alpha must be >= 0, got {alpha}")
    model = Ridge(alpha=alpha)
    model.fit(ref.astype(np.float64), values.astype(np.float64))
    return model.predict(query.astype(np.float64)).astype(np.float32)


def _embedding(adata: ad.AnnData, rep: str, who: str) -> np.ndarray:
    if rep not in adata.obsm:
        have = list(adata.obsm.keys())
        raise InputError(
            f"{who}: obsm[{rep!r}] is missing (obsm has {have}); embed the slides first (histokg.tl.embed)"
        )
    emb = np.asarray(adata.obsm[rep], dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
        raise InputError(f"{who}: obsm[{rep!r}] must be an (n_obs, dim) array, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        bad = int((~np.isfinite(emb)).any(axis=1).sum())
        raise InputError(
            f"{who}: obsm[{rep!r}] has non-finite values in {bad} of {len(emb)} rows; embed the slides again "
            "(histokg embed writes finite embeddings only)"
        )
    return emb


def _same_width(q: np.ndarray, r: np.ndarray, q_rep: str, r_rep: str) -> None:
    if q.shape[1] != r.shape[1]:
        raise InputError(
            f"query obsm[{q_rep!r}] has {q.shape[1]} dimensions but reference obsm[{r_rep!r}] has {r.shape[1]}: "
            "were both embedded with the same model?"
        )


def _counts(adata: ad.AnnData, layer: str | None, what: str):
    if layer and layer in adata.layers:
        return adata.layers[layer]
    if layer and what == "reference":
        raise InputError(
            f"reference: layers[{layer!r}] (raw counts) is missing (layers: {list(adata.layers.keys())}); "
            "the reference slides need measured expression"
        )
    return adata.X


def embedding_checkpoint(adata: ad.AnnData) -> str | None:
    """sha256 of the checkpoint that embedded ``adata`` (``uns["histokg"]["params"]``), if recorded."""
    info = adata.uns.get(Key.uns.histokg)
    params = info.get(Key.histokg.params) if isinstance(info, dict) else None
    value = params.get(Key.params.checkpoint_sha256) if isinstance(params, dict) else None
    return str(value) if value else None


def same_checkpoint(query: ad.AnnData, reference: ad.AnnData) -> str | None:
    """The checkpoint hash both were embedded with; error if they record different checkpoints.

    Embeddings of two models live in different spaces: comparing them gives numbers, not answers.
    """
    q, r = embedding_checkpoint(query), embedding_checkpoint(reference)
    if q and r and q != r:
        raise InputError(
            f"the query was embedded with checkpoint {q[:12]} but the reference with {r[:12]}; embed both with "
            "the same checkpoint (uns['histokg']['params']['checkpoint_sha256'])"
        )
    return q or r


def _libraries(adata: ad.AnnData) -> list[str]:
    if Key.obs.library_id not in adata.obs:
        return []
    return sorted(map(str, pd.unique(adata.obs[Key.obs.library_id].astype(str))))
