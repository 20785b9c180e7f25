"""histokg.tl (analysis, expression prediction) and the metric helpers it uses."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import histokg.tl as tl
from histokg.errors import InputError
from histokg.metrics import (
    MetricInputError,
    chance_recall,
    cluster_agreement,
    knn_predict,
    knn_search,
    mse_mae,
    pearson_per_gene,
    retrieval_recall,
)
from histokg.pp import log1p_cp10k, top_genes


def fake_embeddings(adata: ad.AnnData, *, noise: float = 0.3, dim: int = 16, seed: int = 0) -> ad.AnnData:
    """Embeddings with signal: a random projection of the spots' centred log1p CP10k (expression tower)
    plus noise (image tower). A projection, not an SVD: LAPACK is slow on a busy 2-core machine."""
    rng = np.random.default_rng(seed)
    hvg = [list(adata.var_names).index(g) for g in top_genes(adata, 200, "variance")]
    x = log1p_cp10k(adata.layers["counts"])[:, hvg].toarray()
    x -= x.mean(axis=0)
    z = x @ rng.normal(size=(x.shape[1], dim))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    img = z + rng.normal(scale=noise / math.sqrt(dim), size=z.shape)
    adata.obsm["X_histokg_expr"] = z.astype(np.float32)
    adata.obsm["X_histokg"] = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def embedded(synth_adata) -> ad.AnnData:
    adata = fake_embeddings(synth_adata.copy())
    genes = top_genes(adata, 100, "variance")
    adata.uns["histokg"] = {
        "params": {"model": "fake", "checkpoint": "0" * 8, "patch_um": 112.0, "genes": genes}
    }
    return adata


def split(adata: ad.AnnData, held: str = "S3") -> tuple[ad.AnnData, ad.AnnData]:
    libs = adata.obs["library_id"].astype(str)
    return adata[libs != held].copy(), adata[libs == held].copy()


# --------------------------------------------------------------------------- metrics


def test_retrieval_recall_hand_computed():
    # rows are L2-normalised; sims = q @ c.T
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    c = np.array([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    # sims: row0 [0.6, 0, 1] -> match 0.6 ranks 2nd; row1 [0.8, 1, 0] -> 1st; row2 [1, 0.8, 0.6] -> 3rd
    rec = retrieval_recall(q, c, ks=(1, 2, 3))
    assert rec[1] == pytest.approx(1 / 3)
    assert rec[2] == pytest.approx(2 / 3)
    assert rec[3] == pytest.approx(1.0)


def test_pearson_mse_mae_hand_computed():
    true = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 1.0]])
    pred = np.array([[2.0, 5.0], [4.0, 5.0], [6.0, 5.0]])
    r = pearson_per_gene(pred, true)
    assert r[0] == pytest.approx(1.0)
    assert r[1] == 0.0  # a constant prediction carries no information: 0, not NaN (never left out)
    r = pearson_per_gene(true[:, ::-1], np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 1.0]]))
    assert np.isnan(r[0]) and r[1] == pytest.approx(np.corrcoef([1.0, 2.0, 3.0], [2.0, 3.0, 1.0])[0, 1])
    mse, mae = mse_mae(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0]))
    assert mse == pytest.approx((0 + 4 + 9) / 3)
    assert mae == pytest.approx((0 + 2 + 3) / 3)
    with pytest.raises(ValueError):
        mse_mae(np.zeros(3), np.zeros(4))


def test_retrieval_ties_and_collapse_count_against_the_query():
    # a collapsed model: every embedding the same -> every match ties with every candidate
    same = np.tile([[0.6, 0.8]], (20, 1))
    rec = retrieval_recall(same, same, ks=(1, 5, 10, 20))
    assert rec[1] == 0.0 and rec[5] == 0.0 and rec[10] == 0.0 and rec[20] == 1.0
    for k in (1, 5, 10):
        assert rec[k] <= chance_recall(20, k)
    # one tie: query 0's match ties with candidate 1 -> rank 2
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[1.0, 0.0], [1.0, 0.0]])
    rec = retrieval_recall(q, c, ks=(1, 2))
    assert rec[1] == 0.0 and rec[2] == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_metrics_refuse_non_finite_input(bad):
    x = np.eye(4)
    y = x.copy()
    y[2, 1] = bad
    with pytest.raises(MetricInputError, match="non-finite"):
        retrieval_recall(x, y)
    with pytest.raises(MetricInputError, match="non-finite"):
        pearson_per_gene(y, x)
    with pytest.raises(MetricInputError, match="non-finite"):
        mse_mae(x, y)
    with pytest.raises(MetricInputError, match="non-finite"):
        knn_predict(x, y, x)


def brute_force_knn(query, reference, values, k, temperature):
    """The reference kNN: every similarity in float64, a stable sort (ties: lower index first)."""
    sims = np.asarray(query, np.float64) @ np.asarray(reference, np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(sims, idx, axis=1)
    w = np.exp((top - top[:, :1]) / temperature)
    w /= w.sum(axis=1, keepdims=True)
    return idx, top, np.einsum("nk,nkg->ng", w, np.asarray(values, np.float64)[idx])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("n_query", "n_ref", "k"), [(300, 2000, 10), (7, 50, 50), (5, 3, 10)])
def test_knn_matches_a_brute_force_reference(n_query, n_ref, k):
    rng = np.random.default_rng(n_ref)
    q, r = _unit_rows(rng.normal(size=(n_query, 32))), _unit_rows(rng.normal(size=(n_ref, 32)))
    values = rng.gamma(1.0, size=(n_ref, 20)).astype(np.float32)
    idx, top, expected = brute_force_knn(q, r, values, min(k, n_ref), 0.1)
    sims, found = knn_search(q, r, k)
    np.testing.assert_array_equal(found, idx)  # the same neighbours, in the same order
    np.testing.assert_allclose(sims, top, atol=1e-6)
    np.testing.assert_allclose(
        knn_predict(q, r, values, k=k, temperature=0.1), expected, rtol=1e-4, atol=1e-5
    )


def test_knn_ties_keep_the_lower_reference_index():
    r = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    sims, idx = knn_search(np.array([[1.0, 0.0]], np.float32), r, 2)  # rows 0, 2, 4 tie at 1.0
    assert idx.tolist() == [[0, 2]] and sims.tolist() == [[1.0, 1.0]]
    pred = knn_predict(np.array([[1.0, 0.0]], np.float32), r, values, k=2, temperature=0.1)
    np.testing.assert_allclose(pred, values[[0, 2]].mean(axis=0, keepdims=True))
    with pytest.raises(MetricInputError, match="one row per reference row"):
        knn_predict(r, r, values[:3])


def test_knn_on_real_expression_matches_the_brute_force_reference(shared_data):
    """her2st C2 as the reference, C3 as the query: embeddings = a random projection of log1p CP10k."""
    from histokg.st.readers.legacy import read_counts_table

    tables = [read_counts_table(shared_data / "her2st" / "counts" / f"{s}.tsv.gz") for s in ("C2", "C3")]
    tables = [t.loc[:, ~t.columns.duplicated()] for t in tables]
    genes = sorted(set(tables[0].columns) & set(tables[1].columns))
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(len(genes), 64))
    ref_x, query_x = (log1p_cp10k(t[genes].to_numpy(np.float32)) for t in tables)
    r, q = _unit_rows(ref_x @ proj), _unit_rows(query_x @ proj)
    values = ref_x[:, :200]
    idx, _, expected = brute_force_knn(q, r, values, 10, 0.1)
    _, found = knn_search(q, r, 10)
    np.testing.assert_array_equal(found, idx)
    np.testing.assert_allclose(knn_predict(q, r, values), expected, rtol=1e-4, atol=1e-5)


def test_cluster_agreement_tiny():
    same = cluster_agreement(["a", "a", "b", "b"], [1, 1, 0, 0])
    assert same == {"ari": pytest.approx(1.0), "nmi": pytest.approx(1.0)}
    # ARI of [0,0,1,1] vs [0,1,0,1]: contingency all ones -> index 0, expected 2/3, max 2 -> -0.5
    cross = cluster_agreement([0, 0, 1, 1], [0, 1, 0, 1])
    assert cross["ari"] == pytest.approx(-0.5)
    assert cross["nmi"] == pytest.approx(0.0, abs=1e-12)
    # missing true labels are left out
    part = cluster_agreement(["a", "a", None, "b", "b"], [1, 1, 2, 0, 0])
    assert part["ari"] == pytest.approx(1.0)


def test_log1p_cp10k_and_top_genes_tiny():
    counts = np.array([[10, 0, 90, 0], [0, 50, 50, 0], [20, 20, 60, 0]], dtype=float)
    adata = ad.AnnData(X=counts.copy(), var=pd.DataFrame(index=["A", "B", "C", "D"]))
    adata.layers["counts"] = sp.csr_matrix(counts)
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(log1p_cp10k(adata.layers["counts"]).toarray(), expected, rtol=1e-6)
    np.testing.assert_allclose(log1p_cp10k(counts), expected, rtol=1e-6)
    np.testing.assert_array_equal(
        log1p_cp10k(adata.layers["counts"]).toarray(), log1p_cp10k(counts, dense=True)
    )
    means = expected.mean(axis=0)
    variances = expected.var(axis=0)
    assert top_genes(adata, 2, "mean") == [["A", "B", "C", "D"][i] for i in np.argsort(-means)[:2]]
    assert top_genes(adata, 2, "mean")[0] == "C"
    assert top_genes(adata, 4, "variance") == [
        ["A", "B", "C", "D"][i] for i in np.argsort(-variances, kind="stable")
    ]
    assert top_genes(adata, 1, "variance", genes=["C", "D"]) == ["C"]
    with pytest.raises(InputError, match="how"):
        top_genes(adata, 2, "median")
    with pytest.raises(InputError, match="absent"):
        top_genes(adata, 2, genes=["A", "Z"])


# --------------------------------------------------------------------------- prediction


def _reference(counts: np.ndarray, expr_emb: np.ndarray, img_emb: np.ndarray | None = None) -> ad.AnnData:
    n, g = counts.shape
    ref = ad.AnnData(
        X=counts.astype(np.float32),
        obs=pd.DataFrame({"library_id": pd.Categorical(["R"] * n)}, index=[f"r{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(g)]),
    )
    ref.layers["counts"] = sp.csr_matrix(counts)
    ref.obsm["X_histokg_expr"] = expr_emb.astype(np.float32)
    ref.obsm["X_histokg"] = (img_emb if img_emb is not None else expr_emb).astype(np.float32)
    return ref


def _query(emb: np.ndarray) -> ad.AnnData:
    q = ad.AnnData(
        obs=pd.DataFrame(
            {"library_id": pd.Categorical(["Q"] * len(emb))}, index=[f"q{i}" for i in range(len(emb))]
        )
    )
    q.obsm["X_histokg"] = emb.astype(np.float32)
    return q


def test_knn_prediction_equals_hand_computed_weighted_mean():
    # every spot has 10,000 counts, so log1p CP10k = log1p(counts)
    counts = np.array([[9000, 1000], [5000, 5000], [1000, 9000], [0, 10000]], dtype=float)
    expr_emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    ref = _reference(counts, expr_emb)
    query = _query(np.array([[1.0, 0.0]]))
    assert tl.predict_expression(query, ref, method="knn", k=2, temperature=0.1) is None  # in place
    # the query has no genes, so the panel (G0, G1) is not its var: the prediction is an obsm DataFrame
    assert list(query.obsm["pred_knn"].columns) == ["G0", "G1"]
    assert query.uns["histokg"]["prediction"]["pred_knn"]["where"] == "obsm"
    out = tl.panel_adata(query)  # the panel AnnData: predictions as layers
    # cosine similarities 1.0, 0.6, 0.0, -1.0 -> the two nearest are spots 0 and 1
    w0 = math.exp(1.0 / 0.1) / (math.exp(1.0 / 0.1) + math.exp(0.6 / 0.1))
    expected = w0 * np.log1p(counts[0]) + (1 - w0) * np.log1p(counts[1])
    np.testing.assert_allclose(out.layers["pred_knn"][0], expected, rtol=1e-5)
    np.testing.assert_array_equal(query.obsm["pred_knn"].to_numpy(), out.layers["pred_knn"])
    # the query has no measured expression: X is the prediction, no counts layer
    np.testing.assert_allclose(out.X, out.layers["pred_knn"])
    assert "counts" not in out.layers
    assert out.uns["histokg"]["panel"] == ["G0", "G1"]
    assert out.uns["histokg"]["prediction"]["pred_knn"]["method"] == "knn"
    assert out.uns["histokg"]["prediction"]["pred_knn"]["params"]["k"] == 2
    # a very high temperature gives the plain mean of the k neighbours
    flat = tl.predict_expression(query, ref, method="knn", k=3, temperature=1e6, key_added="flat", copy=True)
    assert "flat" not in query.obsm  # copy=True leaves the query alone
    np.testing.assert_allclose(
        tl.predicted(flat, "flat").iloc[0], np.log1p(counts[:3]).mean(axis=0), rtol=1e-4
    )


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(1)
    n, d, g = 300, 6, 4
    emb = rng.normal(size=(n, d))
    weights = rng.normal(scale=0.3, size=(d, g))
    target = emb @ weights + 3.0  # the log1p CP10k values to recover (all > 0)
    # counts whose log1p CP10k is exactly `target`: genes at expm1(target), one filler gene to 10,000
    cp10k = np.expm1(target)
    counts = np.concatenate([cp10k, 1e4 - cp10k.sum(axis=1, keepdims=True)], axis=1)
    ref = _reference(counts, emb, img_emb=emb)
    q_emb = rng.normal(size=(20, d))
    out = tl.predict_expression(
        _query(q_emb), ref, method="ridge", alpha=1e-6, genes=[f"G{j}" for j in range(g)], copy=True
    )
    np.testing.assert_allclose(tl.predicted(out, "pred_ridge"), q_emb @ weights + 3.0, atol=2e-3)
    assert out.uns["histokg"]["prediction"]["pred_ridge"]["params"]["alpha"] == pytest.approx(1e-6)


def test_predict_expression_errors(embedded):
    ref, held = split(embedded)
    with pytest.raises(InputError, match="method"):
        tl.predict_expression(held, ref, method="mlp")
    no_rep = ref.copy()
    del no_rep.obsm["X_histokg_expr"]
    with pytest.raises(InputError, match="X_histokg_expr"):
        tl.predict_expression(held, no_rep, method="knn")
    with pytest.raises(InputError, match="lacks 2 of the 3 panel genes"):
        tl.predict_expression(held, ref, genes=["EPCAM", "NOT_A_GENE", "NOT_B"])
    with pytest.raises(InputError, match="X_other"):
        tl.predict_expression(held, ref, use_rep="X_other")


def test_a_panel_gene_missing_from_a_section_is_a_measured_zero(embedded, caplog):
    ref, held = split(embedded)
    panel = list(embedded.uns["histokg"]["params"]["genes"])
    dropped = panel[3]
    lacking = held[:, [g for g in held.var_names if g != dropped]].copy()
    tl.predict_expression(lacking, ref, method="knn", k=5)
    out = tl.panel_adata(lacking)
    assert "query lacks 1 of the" in caplog.text and "measured zeros" in caplog.text
    col = panel.index(dropped)
    assert out.uns["histokg"]["absent_genes"] == [dropped]
    assert np.all(out.X[:, col] == 0) and out.layers["counts"][:, col].nnz == 0
    assert np.isfinite(out.layers["pred_knn"]).all()
    full = tl.predict_expression(held, ref, method="knn", k=5, copy=True)
    np.testing.assert_allclose(out.layers["pred_knn"], tl.predicted(full, "pred_knn"), rtol=1e-5)


def test_embeddings_of_two_checkpoints_never_mix(embedded):
    ref, held = split(embedded)
    for a, sha in ((ref, "a" * 64), (held, "b" * 64)):
        a.uns["histokg"] = {"params": {**a.uns["histokg"]["params"], "checkpoint_sha256": sha}}
    with pytest.raises(
        InputError, match="embedded with checkpoint bbbbbbbbbbbb but the reference with aaaaaaaaaaaa"
    ):
        tl.predict_expression(held, ref, method="knn")


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # inside squidpy
def test_panel_adata_contract_h5ad_and_squidpy(embedded, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    from histokg.st.contract import validate, write_h5ad

    ref, held = split(embedded)
    panel = embedded.uns["histokg"]["params"]["genes"]
    tl.predict_expression(held, ref, method="knn", k=5)
    tl.predict_expression(held, ref, method="ridge")
    assert set(held.uns["histokg"]["prediction"]) == {"pred_knn", "pred_ridge"}
    out = tl.panel_adata(held)
    assert list(out.var_names) == panel  # default genes: the model's panel
    assert list(out.obs_names) == list(held.obs_names)
    measured = log1p_cp10k(held.layers["counts"]).toarray()[:, [list(held.var_names).index(g) for g in panel]]
    np.testing.assert_allclose(out.X, measured, rtol=1e-6)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), held[:, panel].layers["counts"].toarray())
    assert out.layers["pred_knn"].shape == (held.n_obs, len(panel))
    assert {"pred_knn", "pred_ridge"} <= set(out.layers) and "pred_knn" not in out.obsm
    assert set(out.uns["histokg"]["prediction"]) == {"pred_knn", "pred_ridge"}
    # predicting into the panel AnnData itself (genes = var) writes layers, as evaluate does
    tl.predict_expression(out, ref, method="knn", k=5, key_added="again")
    np.testing.assert_array_equal(out.layers["again"], out.layers["pred_knn"])
    assert out.uns["histokg"]["prediction"]["again"]["where"] == "layers"
    assert out.uns["histokg"]["params"]["model"] == "fake"
    np.testing.assert_array_equal(out.obsm["X_histokg"], held.obsm["X_histokg"])
    validate(out, source="panel")

    path = write_h5ad(out, tmp_path / "panel.h5ad")
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.layers["pred_ridge"], out.layers["pred_ridge"])
    assert list(back.uns["histokg"]["panel"]) == panel
    assert back.uns["histokg"]["prediction"]["pred_knn"]["method"] == "knn"
    assert (
        back.uns["spatial"]["S3"]["images"]["hires"].shape
        == held.uns["spatial"]["S3"]["images"]["hires"].shape
    )

    sq.pl.spatial_scatter(back, library_id="S3", color=[panel[0]], layer="pred_knn", img_res_key="hires")
    png = tmp_path / "scatter.png"
    plt.savefig(png)
    plt.close("all")
    assert png.stat().st_size > 5000


def test_predictions_of_some_spots_go_into_the_whole_adata_and_through_h5ad(embedded, tmp_path):
    """What the demo's embedded.h5ad holds: held-out predictions over the panel, NaN for the reference."""
    from histokg.st.contract import write_h5ad

    whole = embedded.copy()
    ref, held = split(whole)
    panel = tl.panel_adata(held, embedded.uns["histokg"]["params"]["genes"])
    tl.predict_expression(panel, ref, method="knn", k=5)
    assert "pred_knn" in panel.layers  # the panel is var: a layer
    tl.add_predictions(whole, panel)
    back = ad.read_h5ad(write_h5ad(whole, tmp_path / "whole.h5ad"))
    frame = tl.predicted(back, "pred_knn")
    assert list(frame.columns) == list(panel.var_names) and frame.shape == (whole.n_obs, panel.n_vars)
    is_held = (back.obs["library_id"].astype(str) == "S3").to_numpy()
    assert frame[~is_held].isna().all().all() and np.isfinite(frame[is_held].to_numpy()).all()
    np.testing.assert_array_equal(frame.loc[panel.obs_names].to_numpy(), panel.layers["pred_knn"])
    record = back.uns["histokg"]["prediction"]["pred_knn"]
    assert record["where"] == "obsm" and record["n_predicted"] == panel.n_obs
    # back to a panel AnnData: the prediction becomes a layer again, not an obsm entry
    again = tl.panel_adata(back[is_held].copy())
    np.testing.assert_array_equal(again.layers["pred_knn"], panel.layers["pred_knn"])
    assert "pred_knn" not in again.obsm
    with pytest.raises(InputError, match="has no 'pred_ridge'"):
        tl.predicted(back, "pred_ridge")


# --------------------------------------------------------------------------- analysis


def test_cluster_writes_scanpy_keys(embedded):
    adata = embedded.copy()
    returned = tl.cluster(adata, n_neighbors=10)
    assert returned is None
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert isinstance(adata.obs["histokg_leiden"].dtype, pd.CategoricalDtype)
    assert {"connectivities", "distances"} <= set(adata.obsp)
    params = adata.uns["histokg_leiden"]["params"]
    assert params["use_rep"] == "X_histokg" and params["n_neighbors"] == 10
    assert cluster_agreement(adata.obs["region"], adata.obs["histokg_leiden"])["ari"] > 0.3

    copy = tl.cluster(embedded, use_rep="X_histokg_expr", umap=False, key_added="expr_leiden", copy=True)
    assert isinstance(copy, ad.AnnData) and "expr_leiden" in copy.obs
    assert "expr_leiden" not in embedded.obs and "X_umap" not in copy.obsm
    with pytest.raises(InputError, match="X_missing"):
        tl.cluster(embedded, use_rep="X_missing", copy=True)


def test_spatial_statistics_writes_squidpy_keys(embedded):
    adata = embedded.copy()
    tl.cluster(adata, umap=False)
    tl.spatial_statistics(adata, genes=["EPCAM", "PTPRC"], n_perms=100)
    info = adata.uns["histokg_spatial"]
    assert info["coord_type"] == "grid" and info["n_neighs"] == 6  # Visium hex array detected
    conn = adata.obsp["spatial_connectivities"]
    libs = adata.obs["library_id"].astype(str).to_numpy()
    rows, cols = conn.nonzero()
    assert (libs[rows] == libs[cols]).all()  # the graph never links two slides
    n_clusters = adata.obs["histokg_leiden"].nunique()
    assert adata.uns["histokg_leiden_nhood_enrichment"]["zscore"].shape == (n_clusters, n_clusters)
    assert set(adata.uns["moranI"].index) == {"EPCAM", "PTPRC"}
    tidy = adata.uns["histokg_moran"]
    assert {"library_id", "feature", "kind", "I", "pval_norm"} <= set(tidy.columns)
    assert set(tidy["library_id"]) == {"all", "S1", "S2", "S3"}
    assert (tidy.loc[tidy["library_id"] == "all", "I"] > 0.1).all()  # marker genes are spatially patterned

    emb = tl.spatial_statistics(embedded, cluster_key=None, use_rep="X_histokg", n_dims=4, copy=True)
    tidy = emb.uns["histokg_moran"]
    assert list(tidy.loc[tidy["library_id"] == "all", "feature"].sort_values()) == [
        f"X_histokg:{i}" for i in range(4)
    ]
    assert set(tidy["kind"]) == {"embedding"}
    assert "histokg_moran" not in embedded.uns
    with pytest.raises(InputError, match="tl.cluster"):
        tl.spatial_statistics(embedded, cluster_key="nope", copy=True)


def _grid_adata(xy: np.ndarray) -> ad.AnnData:
    a = ad.AnnData(
        obs=pd.DataFrame(
            {"library_id": pd.Categorical(["L"] * len(xy))}, index=[f"s{i}" for i in range(len(xy))]
        )
    )
    a.obsm["spatial"] = xy.astype(float)
    return a


def test_spatial_graph_detects_lattices():
    square = np.stack(np.meshgrid(np.arange(12), np.arange(10)), -1).reshape(-1, 2) * 200.0
    square += np.random.default_rng(0).normal(scale=3.0, size=square.shape)  # spot-detector jitter
    a = _grid_adata(square)
    assert tl.spatial_graph(a) is None  # in place, scanpy style
    assert a.uns["histokg_spatial"]["coord_type"] == "grid"
    assert a.obsp["spatial_connectivities"].sum(axis=1).max() == 4
    scattered = _grid_adata(np.random.default_rng(1).uniform(0, 1000, size=(80, 2)))
    info = tl.spatial_graph(scattered, copy=True).uns["histokg_spatial"]
    assert info["coord_type"] == "generic" and info["n_neighs"] == 6
    assert "histokg_spatial" not in scattered.uns  # copy=True leaves the input alone


class FakePrior:
    """The two attributes histokg.tl.kg_scores uses from a histokg.priors.KGPrior."""

    def __init__(self, gene_names=None):
        self.entity_ids = [
            "pathway:LOW_VAR",
            "pathway:HIGH_VAR",
            "pathway:UNSCORED",
            "celltype:T cell",
            "phenotype:X",
        ]
        if gene_names is not None:
            self.gene_names = gene_names
        self.seen = None

    def activations(self, X):
        self.seen = X
        x = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=float)
        n = x.shape[0]
        return np.stack(
            [0.01 * x[:, 0], x[:, 0], np.full(n, np.nan), x[:, 1], x[:, 0] + x[:, 1]], axis=1
        ).astype(np.float32)


def test_kg_scores_writes_obs_columns():
    counts = np.array([[1, 5, 0], [4, 1, 0], [9, 2, 1]], dtype=float)
    adata = ad.AnnData(
        X=counts, var=pd.DataFrame(index=["A", "B", "C"]), obs=pd.DataFrame(index=["s0", "s1", "s2"])
    )
    adata.layers["counts"] = counts.copy()
    tl.kg_scores(adata, FakePrior(), top=None)
    assert list(adata.uns["histokg_kg_scores"]["columns"]) == [
        "kg:pathway:LOW_VAR",
        "kg:pathway:HIGH_VAR",
        "kg:celltype:T cell",
    ]
    np.testing.assert_allclose(adata.obs["kg:pathway:HIGH_VAR"], counts[:, 0])
    np.testing.assert_allclose(adata.obs["kg:celltype:T cell"], counts[:, 1])
    assert "kg:phenotype:X" not in adata.obs and "kg:pathway:UNSCORED" not in adata.obs

    top = tl.kg_scores(adata, FakePrior(), top=1, key_prefix="s_", copy=True)
    assert [c for c in top.obs if c.startswith("s_")] == ["s_pathway:HIGH_VAR", "s_celltype:T cell"]
    # a prior built on another gene order gets its columns in its own order
    prior = FakePrior(gene_names=["B", "A", "C"])
    tl.kg_scores(adata, prior, top=None, key_prefix="r_")
    np.testing.assert_allclose(adata.obs["r_pathway:HIGH_VAR"], counts[:, 1])
    with pytest.raises(InputError, match="lacks"):
        tl.kg_scores(adata, FakePrior(gene_names=["A", "Z"]), copy=True)
    with pytest.raises(InputError, match="layers"):
        tl.kg_scores(adata, FakePrior(), layer="raw", copy=True)


def test_blend_is_the_mean_of_knn_and_ridge_and_smoothing_follows_the_spot_graph(embedded):
    from histokg.tl.predict import smooth_values, spot_graph

    ref, held = split(embedded)
    got = {}
    for method in ("knn", "ridge", "blend"):
        got[method] = tl.predicted(
            tl.predict_expression(held, ref, method=method, copy=True), f"pred_{method}"
        )
    np.testing.assert_allclose(got["blend"], (got["knn"] + got["ridge"]) / 2, rtol=1e-5, atol=1e-6)
    smoothed = tl.predict_expression(held, ref, method="knn", smooth=0.5, key_added="s", copy=True)
    assert smoothed.uns["histokg"]["prediction"]["s"]["params"]["smooth"] == 0.5
    graph = spot_graph(held)  # squidpy's spot graph of the held-out section (built on a light copy)
    assert (
        graph.shape == (held.n_obs, held.n_obs)
        and graph.nnz > 0
        and "spatial_connectivities" not in held.obsp
    )
    want = smooth_values(got["knn"].to_numpy(), graph, 0.5)
    np.testing.assert_allclose(tl.predicted(smoothed, "s").to_numpy(), want, rtol=1e-5, atol=1e-6)
    # by hand for one spot: half its own value, half the mean of its neighbours'
    row = int(np.flatnonzero(np.diff(graph.indptr) > 0)[0])
    nbrs = graph.indices[graph.indptr[row] : graph.indptr[row + 1]]
    values = got["knn"].to_numpy()
    np.testing.assert_allclose(want[row], 0.5 * values[row] + 0.5 * values[nbrs].mean(0), rtol=1e-5)
    with pytest.raises(InputError, match="smooth must be in"):
        tl.predict_expression(held, ref, smooth=1.5)


# --------------------------------------------------------------------------- prediction parameters


def _clusters(n_groups: int, per_cluster: int, n_clusters: int, noise: float, seed: int = 0):
    """Embeddings that place spots by cluster (image = expression embedding, both unit) and values = the
    cluster's mean profile plus i.i.d. noise; ``n_groups`` slides, each with every cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, 16))
    profiles = rng.normal(size=(n_clusters, 30))
    emb, vals, groups = [], [], []
    for g in range(n_groups):
        for c in range(n_clusters):
            e = centres[c] + 0.05 * rng.normal(size=(per_cluster, 16))
            emb.append(e / np.linalg.norm(e, axis=1, keepdims=True))
            vals.append(profiles[c] + noise * rng.normal(size=(per_cluster, 30)))
            groups += [g] * per_cluster
    return np.concatenate(emb).astype(np.float32), np.concatenate(vals).astype(np.float32), np.array(groups)


def test_choose_params_takes_more_neighbours_where_the_values_are_noisier():
    """Each reference slide predicted from the others: with noisy values averaging many neighbours of a
    cluster wins; with exact values and a continuum (each spot its own profile) the nearest few win."""
    from histokg.tl.predict import ALPHA_GRID, K_GRID, choose_params

    emb, vals, groups = _clusters(3, per_cluster=120, n_clusters=4, noise=3.0)
    noisy = choose_params(emb, emb, vals, groups)
    assert noisy["k"] >= 40 and noisy["k"] in K_GRID and noisy["alpha"] in ALPHA_GRID
    assert set(noisy["k_scores"]) == {str(k) for k in K_GRID}
    assert "leave-one-reference-slide-out over 3" in noisy["chosen_by"]

    rng = np.random.default_rng(1)
    t = rng.uniform(0, 2 * np.pi, 900)  # a circle: neighbours in embedding = neighbours in value
    emb = np.stack([np.cos(t), np.sin(t)], 1).astype(np.float32)
    vals = np.stack([np.sin(3 * t + j) for j in range(20)], 1).astype(np.float32)
    exact = choose_params(emb, emb, vals, np.arange(900) % 3)
    assert exact["k"] <= 10
    # values linear in the image embedding, no noise: the least penalised ridge wins
    lin = choose_params(emb, emb, emb @ rng.normal(size=(2, 20)).astype(np.float32), np.arange(900) % 3)
    assert lin["alpha"] == min(ALPHA_GRID)


def test_choose_params_with_one_slide_uses_blocks_and_refuses_too_little():
    from histokg.tl.predict import choose_params

    emb, vals, _ = _clusters(1, per_cluster=60, n_clusters=3, noise=1.0)
    one = choose_params(emb, emb, vals, np.zeros(len(emb)))
    assert "over 3 inner folds" in one["chosen_by"]
    with pytest.raises(InputError, match="at least two slides or three spots"):
        choose_params(emb[:1], emb[:1], vals[:1], np.zeros(1))


def test_predict_expression_chooses_k_and_alpha_on_the_reference_by_default(embedded):
    """Default k and alpha: chosen on the reference alone (recorded), and the prediction is the one those
    values give when passed explicitly; a held-out slide changes nothing about the choice."""
    from histokg.tl.predict import reference_params

    ref, held = split(embedded)
    out = tl.predict_expression(held, ref, method="blend", copy=True)
    params = out.uns["histokg"]["prediction"]["pred_blend"]["params"]
    chosen = params["chosen"]
    assert params["k"] == chosen["k"] and params["alpha"] == chosen["alpha"]
    assert chosen == reference_params(ref)
    other_held = split(embedded, "S1")[1]
    again = tl.predict_expression(other_held, ref, method="knn", copy=True)
    assert again.uns["histokg"]["prediction"]["pred_knn"]["params"]["k"] == chosen["k"]
    explicit = tl.predict_expression(
        held, ref, method="blend", k=chosen["k"], alpha=chosen["alpha"], copy=True
    )
    np.testing.assert_array_equal(
        tl.predicted(out, "pred_blend").to_numpy(), tl.predicted(explicit, "pred_blend").to_numpy()
    )
    assert "chosen" not in explicit.uns["histokg"]["prediction"]["pred_blend"]["params"]
