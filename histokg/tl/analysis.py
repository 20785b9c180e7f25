"""scanpy/squidpy analysis of histokg embeddings, scanpy style: ``f(adata, *, ..., copy=False)``.

- :func:`cluster`: kNN graph on an embedding, UMAP, Leiden (the usual scanpy keys).
- :func:`spatial_statistics`: per-library spatial graph, neighbourhood enrichment of clusters and
  Moran's I of genes or embedding dimensions (the usual squidpy keys plus a tidy table).
- :func:`kg_scores`: knowledge-graph pathway and cell-type activations as ``obs`` columns.

scanpy and squidpy are imported when a function runs, so that ``import histokg.tl`` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg import keys
from histokg.errors import InputError
from histokg.keys import Key
from histokg.pp import log1p_cp10k

log = logging.getLogger(__name__)

KG_TYPES = ("pathway", "celltype")


def cluster(
    adata: ad.AnnData,
    *,
    use_rep: str = keys.IMAGE,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    key_added: str = Key.obs.cluster,
    umap: bool = True,
    random_state: int = 0,
    neighbors_key: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """kNN graph on ``obsm[use_rep]`` (``sc.pp.neighbors``), UMAP and Leiden (igraph flavour).

    Writes ``obsp["connectivities"/"distances"]`` and ``uns["neighbors"]`` (or under ``neighbors_key``),
    ``obsm["X_umap"]`` when ``umap``, ``obs[key_added]`` (categorical) and ``uns[key_added]["params"]``
    (scanpy's record plus ``use_rep`` and ``n_neighbors``).
    """
    import scanpy as sc

    adata = adata.copy() if copy else adata
    _check_rep(adata, use_rep)
    if adata.n_obs < 3:
        raise InputError(f"cluster: need at least 3 spots, got {adata.n_obs}")
    k = int(min(n_neighbors, adata.n_obs - 1))
    if k < n_neighbors:
        log.warning("cluster: n_neighbors=%d lowered to %d for %d spots", n_neighbors, k, adata.n_obs)
    sc.pp.neighbors(adata, n_neighbors=k, use_rep=use_rep, random_state=random_state, key_added=neighbors_key)
    if umap:
        sc.tl.umap(adata, random_state=random_state, neighbors_key=neighbors_key)
    sc.tl.leiden(
        adata,
        resolution=resolution,
        key_added=key_added,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=random_state,
        neighbors_key=neighbors_key,
    )
    record = adata.uns.setdefault(key_added, {}).setdefault(Key.uns.cluster_params, {})
    record.update({"use_rep": use_rep, "n_neighbors": k, "umap": bool(umap), "flavor": "igraph"})
    log.info(
        "cluster: %d Leiden clusters on %s in obs[%r]", adata.obs[key_added].nunique(), use_rep, key_added
    )
    return adata if copy else None


def spatial_statistics(
    adata: ad.AnnData,
    *,
    cluster_key: str | None = Key.obs.cluster,
    genes: Sequence[str] | None = None,
    use_rep: str | None = None,
    n_dims: int = 10,
    library_key: str = Key.obs.library_id,
    layer: str | None = Key.layers.counts,
    coord_type: str | None = None,
    n_neighs: int | None = None,
    n_perms: int = 1000,
    moran_perms: int | None = None,
    seed: int = 0,
    copy: bool = False,
) -> ad.AnnData | None:
    """Spatial graph per library, neighbourhood enrichment of ``cluster_key``, Moran's I.

    - Graph: ``coord_type=None`` detects the lattice of each library's spots: hexagonal (Visium) ->
      squidpy grid with 6 neighbours, square (legacy ST) -> grid with 4, otherwise generic kNN with
      ``n_neighs`` (default 6). Writes ``obsp["spatial_connectivities"/"spatial_distances"]``.
    - ``sq.gr.nhood_enrichment`` of ``obs[cluster_key]`` (permutations within each library):
      ``uns[f"{cluster_key}_nhood_enrichment"]``. ``cluster_key=None`` skips it.
    - Moran's I of ``genes`` (log1p CP10k of raw counts when ``layer="counts"``; ``layer=None``: ``X``
      as it is; another layer as it is) and of the first ``n_dims`` columns of ``obsm[use_rep]``
      (``use_rep`` defaults to ``"X_histokg"`` when neither genes nor use_rep are given). The pooled
      squidpy table goes to ``uns["moranI"]``; ``uns["histokg_moran"]`` is a tidy DataFrame with one
      row per (library, feature): ``library_id`` ("all" = every library on the joint graph),
      ``feature``, ``kind`` ("gene"/"embedding"), ``I``, ``pval_norm``, ``pval_norm_fdr_bh``.
    """
    adata = adata.copy() if copy else adata
    _check_spatial(adata, library_key)
    spatial_graph(adata, library_key=library_key, coord_type=coord_type, n_neighs=n_neighs)
    graph = dict(adata.uns[Key.uns.spatial_statistics])
    if cluster_key is not None:
        _nhood(adata, cluster_key, library_key, n_perms=n_perms, seed=seed)
    if genes is None and use_rep is None and keys.IMAGE in adata.obsm:
        use_rep = keys.IMAGE
    values, names, kinds = _moran_features(adata, genes, use_rep, n_dims, layer)
    if values.shape[1]:
        pooled, tidy = _moran_tables(adata, values, names, kinds, library_key, moran_perms, seed)
        adata.uns[Key.uns.moran_pooled] = pooled
        adata.uns[Key.uns.moran] = tidy
    adata.uns[Key.uns.spatial_statistics] = {
        **graph,
        "cluster_key": cluster_key or "",
        "n_perms": int(n_perms),
        "genes": list(genes or []),
        "use_rep": use_rep or "",
        "n_dims": int(n_dims),
        "layer": layer or "X",
    }
    return adata if copy else None


def spatial_graph(
    adata: ad.AnnData,
    *,
    library_key: str = Key.obs.library_id,
    coord_type: str | None = None,
    n_neighs: int | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Build the squidpy spatial graph per library (see :func:`spatial_statistics` for the lattice rule).

    Writes ``obsp["spatial_connectivities"/"spatial_distances"]`` (squidpy) and what was built to
    ``uns["histokg_spatial"]``: ``coord_type``, ``n_neighs``, ``library_key``, ``mean_degree``.
    """
    import squidpy as sq

    adata = adata.copy() if copy else adata

    if coord_type is None:
        lattice = _lattice(adata, library_key)
        coord_type = "grid" if lattice else "generic"
        n_neighs = n_neighs or lattice or 6
    elif coord_type not in ("grid", "generic"):
        raise InputError(
            f"spatial_statistics: coord_type={coord_type!r} is not one of 'grid', 'generic', None"
        )
    n_neighs = int(n_neighs or 6)
    n_neighs = max(1, min(n_neighs, _smallest_library(adata, library_key) - 1))
    if coord_type == "grid" and hasattr(sq.gr, "spatial_neighbors_grid"):
        sq.gr.spatial_neighbors_grid(adata, library_key=library_key, n_neighs=n_neighs)
    elif coord_type == "generic" and hasattr(sq.gr, "spatial_neighbors_knn"):
        sq.gr.spatial_neighbors_knn(adata, library_key=library_key, n_neighs=n_neighs)
    else:  # squidpy < 1.7
        sq.gr.spatial_neighbors(adata, library_key=library_key, coord_type=coord_type, n_neighs=n_neighs)
    conn = adata.obsp[Key.obsp.spatial_connectivities]
    mean_degree = float(np.asarray(conn.sum(axis=1)).mean()) if adata.n_obs else 0.0
    log.info("spatial graph: %s, %d neighbours, mean degree %.2f", coord_type, n_neighs, mean_degree)
    adata.uns[Key.uns.spatial_statistics] = {
        "coord_type": coord_type,
        "n_neighs": n_neighs,
        "library_key": library_key,
        "mean_degree": mean_degree,
    }
    return adata if copy else None


def kg_scores(
    adata: ad.AnnData,
    prior: Any,
    *,
    layer: str | None = Key.layers.counts,
    top: int | None = 20,
    key_prefix: str = "kg:",
    types: Sequence[str] = KG_TYPES,
    copy: bool = False,
) -> ad.AnnData | None:
    """Knowledge-graph activations of each spot as ``obs`` columns ``f"{key_prefix}{entity_id}"`` ("/" -> "_").

    ``prior`` is a :class:`histokg.priors.KGPrior` (anything with ``activations(X) -> (n, n_entities)``
    and ``entity_ids``); ``X`` is ``layers[layer]`` (``None``: ``X``), reordered to ``prior.gene_names``
    when the prior has them. Entities of the given ``types`` (id prefix before ":") are kept; ``top``
    keeps the ``top`` most variable entities of each type (``None``: all). Entities without a score
    (all NaN) are dropped. ``uns["histokg_kg_scores"]`` records the columns written.
    """
    adata = adata.copy() if copy else adata
    X = _prior_input(adata, prior, layer)
    acts = np.asarray(prior.activations(X), dtype=np.float64)
    ids = [str(e) for e in prior.entity_ids]
    if acts.shape != (adata.n_obs, len(ids)):
        raise InputError(
            f"kg_scores: prior.activations returned shape {acts.shape}, expected ({adata.n_obs}, {len(ids)})"
        )
    chosen: list[int] = []
    for kind in types:
        cols = [i for i, e in enumerate(ids) if e.split(":", 1)[0] == kind and not np.isnan(acts[:, i]).all()]
        if top is not None and len(cols) > top:
            var = np.nanvar(acts[:, cols], axis=0)
            order = np.argsort(-var, kind="stable")[: int(top)]
            cols = [cols[i] for i in sorted(order)]
        chosen.extend(cols)
    if not chosen:
        raise InputError(f"kg_scores: the prior activates no entity of types {list(types)}")
    columns = [f"{key_prefix}{ids[i]}".replace("/", "_") for i in chosen]  # "/" is not allowed in h5ad keys
    frame = pd.DataFrame(acts[:, chosen].astype(np.float32), index=adata.obs_names, columns=columns)
    for col in columns:
        adata.obs[col] = frame[col].to_numpy()
    adata.uns[Key.uns.kg_scores] = {
        "columns": columns,
        "layer": layer or "X",
        "top": -1 if top is None else int(top),
        "types": list(types),
    }
    log.info("kg_scores: %d KG activation columns written to obs", len(columns))
    return adata if copy else None


# --------------------------------------------------------------------------- helpers


def _check_rep(adata: ad.AnnData, rep: str) -> None:
    if rep not in adata.obsm:
        raise InputError(
            f"obsm[{rep!r}] is missing (obsm has {list(adata.obsm.keys())}); embed the slides first (histokg.tl.embed)"
        )
    arr = np.asarray(adata.obsm[rep])
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise InputError(f"obsm[{rep!r}] must be a finite (n_obs, dim) array, got shape {arr.shape}")


def _check_spatial(adata: ad.AnnData, library_key: str) -> None:
    if Key.obsm.spatial not in adata.obsm or np.asarray(adata.obsm[Key.obsm.spatial]).shape != (
        adata.n_obs,
        2,
    ):
        raise InputError("obsm['spatial'] must be an (n_obs, 2) array of (x, y) spot centres")
    if library_key not in adata.obs:
        raise InputError(f"obs[{library_key!r}] is missing; it names each spot's slide")
    if not isinstance(adata.obs[library_key].dtype, pd.CategoricalDtype):
        adata.obs[library_key] = adata.obs[library_key].astype("category")


def _smallest_library(adata: ad.AnnData, library_key: str) -> int:
    sizes = adata.obs[library_key].value_counts()
    sizes = sizes[sizes > 0]
    if sizes.empty or sizes.min() < 2:
        raise InputError(f"spatial_statistics: every library in obs[{library_key!r}] needs at least 2 spots")
    return int(sizes.min())


def _lattice(adata: ad.AnnData, library_key: str) -> int | None:
    """6 for a hexagonal spot array, 4 for a square one, None for irregular coordinates.

    A regular lattice has (nearly) all nearest-neighbour distances equal: a spot's neighbours within
    1.3x the median nearest distance are its lattice neighbours (6 inside a hex array, 4 in a square).
    """
    from sklearn.neighbors import NearestNeighbors

    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
    libs = adata.obs[library_key].astype(str).to_numpy()
    votes = []
    for lib in pd.unique(libs):
        pts = xy[libs == lib]
        if len(pts) < 10:
            continue
        k = min(9, len(pts) - 1)
        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(pts).kneighbors(pts)
        dist = dist[:, 1:]
        d1 = np.median(dist[:, 0])
        if d1 <= 0 or np.quantile(dist[:, 0], 0.9) > 1.15 * d1:  # irregular spacing
            votes.append(None)
            continue
        count = (dist < 1.3 * d1).sum(axis=1)
        top = int(np.quantile(count, 0.9))  # interior spots; edge spots have fewer
        votes.append(6 if top == 6 else 4 if top == 4 else None)
    if not votes or any(v is None for v in votes) or len(set(votes)) != 1:
        return None
    return votes[0]


def _nhood(adata: ad.AnnData, cluster_key: str, library_key: str, *, n_perms: int, seed: int) -> None:
    import squidpy as sq

    if cluster_key not in adata.obs:
        raise InputError(
            f"spatial_statistics: obs[{cluster_key!r}] is missing; run histokg.tl.cluster first or pass cluster_key=None"
        )
    if not isinstance(adata.obs[cluster_key].dtype, pd.CategoricalDtype):
        adata.obs[cluster_key] = adata.obs[cluster_key].astype(str).astype("category")
    sq.gr.nhood_enrichment(
        adata,
        cluster_key=cluster_key,
        library_key=library_key,
        n_perms=n_perms,
        seed=seed,
        show_progress_bar=False,
    )


def _moran_features(
    adata: ad.AnnData, genes: Sequence[str] | None, use_rep: str | None, n_dims: int, layer: str | None
) -> tuple[np.ndarray, list[str], list[str]]:
    blocks, names, kinds = [], [], []
    if genes:
        genes = [str(g) for g in genes]
        index = {g: i for i, g in enumerate(map(str, adata.var_names))}
        missing = [g for g in genes if g not in index]
        if missing:
            raise InputError(f"spatial_statistics: genes {missing[:5]} are not in var_names")
        cols = [index[g] for g in genes]
        if layer == Key.layers.counts:
            if Key.layers.counts not in adata.layers:
                raise InputError("spatial_statistics: layers['counts'] is missing; pass layer=None to use X")
            values = log1p_cp10k(adata.layers[Key.layers.counts])[:, cols]
        elif layer is None:
            values = adata.X[:, cols]
        else:
            if layer not in adata.layers:
                raise InputError(f"spatial_statistics: layers[{layer!r}] is missing")
            values = adata.layers[layer][:, cols]
        blocks.append(np.asarray(values.toarray() if sp.issparse(values) else values, dtype=np.float64))
        names += genes
        kinds += ["gene"] * len(genes)
    if use_rep is not None:
        _check_rep(adata, use_rep)
        emb = np.asarray(adata.obsm[use_rep], dtype=np.float64)
        d = int(min(n_dims, emb.shape[1]))
        blocks.append(emb[:, :d])
        names += [f"{use_rep}:{i}" for i in range(d)]
        kinds += ["embedding"] * d
    values = np.concatenate(blocks, axis=1) if blocks else np.zeros((adata.n_obs, 0))
    return values, names, kinds


def _moran(
    conn: sp.spmatrix, values: np.ndarray, names: list[str], n_perms: int | None, seed: int
) -> pd.DataFrame:
    """squidpy's Moran's I of the columns of ``values`` on the graph ``conn``."""
    import squidpy as sq

    tmp = ad.AnnData(X=values.astype(np.float64), var=pd.DataFrame(index=pd.Index(names)))
    tmp.obsp[Key.obsp.spatial_connectivities] = sp.csr_matrix(conn)
    return sq.gr.spatial_autocorr(
        tmp, mode="moran", genes=names, n_perms=n_perms, seed=seed, copy=True, show_progress_bar=False
    )


def _moran_tables(
    adata: ad.AnnData,
    values: np.ndarray,
    names: list[str],
    kinds: list[str],
    library_key: str,
    n_perms: int | None,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    conn = sp.csr_matrix(adata.obsp[Key.obsp.spatial_connectivities])
    kind_of = dict(zip(names, kinds, strict=True))
    pooled = _moran(conn, values, names, n_perms, seed)
    frames = [pooled.assign(library_id="all")]
    libs = adata.obs[library_key].astype(str).to_numpy()
    for lib in pd.unique(libs):
        idx = np.flatnonzero(libs == lib)
        if len(idx) < 3:
            continue
        frames.append(_moran(conn[idx][:, idx], values[idx], names, n_perms, seed).assign(library_id=lib))
    tidy = pd.concat(frames).rename_axis("feature").reset_index()
    tidy["kind"] = tidy["feature"].map(kind_of)
    front = [Key.obs.library_id, "feature", "kind", "I"]
    tidy = tidy[front + [c for c in tidy.columns if c not in front]].reset_index(drop=True)
    tidy[Key.obs.library_id] = tidy[Key.obs.library_id].astype(str)
    tidy["feature"] = tidy["feature"].astype(str)
    return pooled, tidy


def _prior_input(adata: ad.AnnData, prior: Any, layer: str | None):
    if not hasattr(prior, "activations") or not hasattr(prior, "entity_ids"):
        raise InputError(
            "kg_scores: prior must have activations(X) and entity_ids (a histokg.priors.KGPrior)"
        )
    if layer is not None and layer not in adata.layers:
        raise InputError(f"kg_scores: layers[{layer!r}] is missing (layers: {list(adata.layers.keys())})")
    X = adata.layers[layer] if layer is not None else adata.X
    wanted = getattr(prior, "gene_names", None)
    names = list(map(str, adata.var_names))
    if wanted is None or list(map(str, wanted)) == names:
        return X
    index = {g: i for i, g in enumerate(names)}
    missing = [g for g in wanted if str(g) not in index]
    if missing:
        raise InputError(
            f"kg_scores: the data lacks {len(missing)} of the prior's {len(wanted)} genes (e.g. {missing[:3]}); "
            "build the prior with gene_names=adata.var_names"
        )
    return X[:, [index[str(g)] for g in wanted]]
