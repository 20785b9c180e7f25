"""histokg.evaluate, histokg.report and histokg.pl on the synthetic study with fake embeddings."""

from __future__ import annotations

import base64
import json
import math
import re

import anndata as ad
import numpy as np
import pytest

from histokg.errors import InputError
from histokg.evaluate import evaluate
from histokg.pp import log1p_cp10k, top_genes
from histokg.report import format_summary_table, write_report


def with_embeddings(adata: ad.AnnData, *, informative: bool, seed: int = 0, dim: int = 16) -> ad.AnnData:
    """Informative: a random projection of centred log1p CP10k (expression tower) and a noisy copy
    (image tower). Else random."""
    rng = np.random.default_rng(seed)
    if informative:
        hvg = [list(adata.var_names).index(g) for g in top_genes(adata, 200, "variance")]
        x = log1p_cp10k(adata.layers["counts"])[:, hvg].toarray()
        x -= x.mean(axis=0)
        expr = x @ rng.normal(size=(x.shape[1], dim))
        expr /= np.linalg.norm(expr, axis=1, keepdims=True)
        img = expr + rng.normal(scale=0.3 / math.sqrt(dim), size=expr.shape)
    else:
        expr = rng.normal(size=(adata.n_obs, dim))
        img = rng.normal(size=(adata.n_obs, dim))
    unit = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    adata.obsm["X_histokg"] = unit(img)
    adata.obsm["X_histokg_expr"] = unit(expr)
    return adata


@pytest.fixture(scope="module")
def study(synth_adata) -> ad.AnnData:
    adata = synth_adata.copy()
    adata.uns["histokg"] = {"params": {"model": "fake", "genes": top_genes(adata, 120, "variance")}}
    return adata


def split(adata: ad.AnnData, held=("S3",)) -> tuple[ad.AnnData, ad.AnnData]:
    libs = adata.obs["library_id"].astype(str)
    return adata[~libs.isin(held)].copy(), adata[libs.isin(held)].copy()


@pytest.fixture(scope="module")
def informative(study):
    ref, held = split(with_embeddings(study.copy(), informative=True))
    results, panel = evaluate(ref, held, return_panel=True)
    return results, panel, ref


def test_informative_embeddings_beat_chance(informative):
    results, panel, _ = informative
    summary = results["summary"]
    retrieval = summary["retrieval"]
    for direction in ("image_to_expression", "expression_to_image"):
        assert retrieval[direction]["R@10"] > 3 * retrieval["chance"]["R@10"]
        assert retrieval[direction]["R@1"] > 5 * retrieval["chance"]["R@1"]
    assert retrieval["chance"]["R@10"] == pytest.approx(10 / panel.n_obs)
    for method in ("knn", "ridge"):
        pred = summary["prediction"][method]
        assert pred["pearson_heg"] > 0.2 and pred["pearson_hvg"] > 0.2 and pred["pearson_all"] > 0.2
        assert pred["mse"] > 0 and pred["mae"] > 0
        assert len(results["per_gene_pearson"][method]["S3"]) == len(results["genes"]["panel"])
    assert summary["clustering"]["image"]["ari"] > 0.3
    assert summary["n_slides"] == 1
    assert {"pred_knn", "pred_ridge", "counts"} <= set(panel.layers)


def test_protocol_states_split_genes_pooling_and_averaging(informative, study):
    results, _, ref = informative
    protocol = results["protocol"]
    assert protocol["split"]["reference"] == ["S1", "S2"] and protocol["split"]["heldout"] == ["S3"]
    assert "reference (training) slides only" in protocol["genes"]["heg"]
    assert "reference (training) slides only" in protocol["genes"]["hvg"]
    assert (
        "whole held-out slide" in protocol["pooling"]
        or "all spots of the held-out slide" in protocol["pooling"]
    )
    assert "log1p" in protocol["normalisation"]
    prediction = protocol["prediction"]
    assert prediction["methods"] == ["knn", "ridge"]
    # k and alpha chosen on the reference alone (each reference slide predicted from the other)
    assert (
        prediction["k"] == prediction["chosen"]["k"] and prediction["alpha"] == prediction["chosen"]["alpha"]
    )
    assert "leave-one-reference-slide-out over 2 inner folds" in prediction["chosen"]["chosen_by"]
    assert "per held-out slide" in protocol["averaging"]
    # HEG/HVG are chosen on the reference only, among the panel
    panel = study.uns["histokg"]["params"]["genes"]
    assert results["genes"]["heg"] == top_genes(ref, 50, "mean", genes=panel)
    assert results["genes"]["hvg"] == top_genes(ref, 50, "variance", genes=panel)
    assert len(results["genes"]["heg"]) == 50


def test_random_embeddings_are_near_chance(study):
    ref, held = split(with_embeddings(study.copy(), informative=False, seed=3))
    results = evaluate(ref, held, methods=("knn",), label_key=None)
    retrieval = results["summary"]["retrieval"]
    chance = retrieval["chance"]["R@10"]
    for direction in ("image_to_expression", "expression_to_image"):
        assert abs(retrieval[direction]["R@10"] - chance) < 0.1
    assert abs(results["summary"]["prediction"]["knn"]["pearson_all"]) < 0.15
    assert "clustering" not in results["summary"]


def test_several_heldout_slides_are_averaged(study):
    ref, held = split(with_embeddings(study.copy(), informative=True, seed=1), held=("S2", "S3"))
    results = evaluate(ref, held, methods=("ridge",), label_key=None)
    assert results["summary"]["n_slides"] == 2
    per_slide = [results["slides"][lib]["prediction"]["ridge"]["pearson_hvg"] for lib in ("S2", "S3")]
    assert results["summary"]["prediction"]["ridge"]["pearson_hvg"] == pytest.approx(np.mean(per_slide))
    pools = [results["slides"][lib]["retrieval"]["pool_size"] for lib in ("S2", "S3")]
    assert pools == [int((held.obs["library_id"] == lib).sum()) for lib in ("S2", "S3")]


def test_blend_and_smoothing_are_evaluated_and_stated(study):
    ref, held = split(with_embeddings(study.copy(), informative=True, seed=2))
    plain, panel = evaluate(ref, held, methods=("knn", "ridge", "blend"), label_key=None, return_panel=True)
    layers = panel.layers
    assert np.allclose(layers["pred_blend"], (layers["pred_knn"] + layers["pred_ridge"]) / 2, atol=1e-5)
    smoothed, spanel = evaluate(ref, held, methods=("blend",), smooth=0.5, label_key=None, return_panel=True)
    assert not np.allclose(spanel.layers["pred_blend"], layers["pred_blend"])
    prediction = smoothed["protocol"]["prediction"]
    assert (
        prediction["smooth"] == 0.5 and "0.5 x the mean of its spatial neighbours" in prediction["smoothing"]
    )
    assert (
        plain["protocol"]["prediction"]["smooth"] == 0.0
        and "smoothing" not in plain["protocol"]["prediction"]
    )
    assert np.isfinite(smoothed["summary"]["prediction"]["blend"]["pearson_heg"])


def test_evaluate_rejects_leaks_and_missing_inputs(study):
    adata = with_embeddings(study.copy(), informative=False)
    ref, held = split(adata)
    with pytest.raises(InputError, match="both reference"):
        evaluate(adata, held)
    with pytest.raises(InputError, match="unknown methods"):
        evaluate(ref, held, methods=("mlp",))
    no_emb = held.copy()
    del no_emb.obsm["X_histokg"]
    with pytest.raises(InputError, match="X_histokg"):
        evaluate(ref, no_emb)


def test_write_report_files(informative, tmp_path):
    results, panel, ref = informative
    paths = write_report(results, tmp_path / "report", heldout_panel_adata=panel, reference=ref)
    for key in ("results", "markdown", "html", "pearson_hist", "spatial_S3", "umap"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    loaded = json.loads(paths["results"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded["protocol"]["split"]["heldout"] == ["S3"]
    assert len(loaded["per_gene_pearson"]["knn"]["S3"]) == len(results["genes"]["panel"])
    html = paths["html"].read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 3
    for src in images:  # self-contained: every figure is inside the HTML
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Protocol" in html and "R@10" in html
    md = paths["markdown"].read_text()
    assert "(pearson_hist.png)" in md and "| image -> expression |" in md
    text = format_summary_table(results)
    assert "held-out slides: S3" in text and "image -> expression" in text and "chance" in text
    assert "Pearson r, top-50 HEG" in text


def test_report_without_adata_or_predictions(study, tmp_path):
    ref, held = split(with_embeddings(study.copy(), informative=True, seed=2))
    results = evaluate(ref, held, methods=(), label_key=None)
    assert "prediction" not in results["summary"] and results["genes"]["heg"] == []
    paths = write_report(results, tmp_path)
    assert set(paths) == {"results", "markdown", "html"}
    assert "<img" not in paths["html"].read_text()
    assert "Cross-modal retrieval" in format_summary_table(results)


def test_a_custom_embedding_key_carries_through_evaluate(study):
    """tl.embed(key_added=K) writes obsm[K] and obsm[K + "_expr"]: evaluate finds both from K alone."""
    adata = with_embeddings(study.copy(), informative=True)
    for old, new in (("X_histokg", "X_mine"), ("X_histokg_expr", "X_mine_expr")):
        adata.obsm[new] = adata.obsm.pop(old)
    ref, held = split(adata)
    results = evaluate(ref, held, use_rep="X_mine")
    assert results["protocol"]["prediction"]["knn"].count("X_mine") == 2
    assert results["summary"]["retrieval"]["image_to_expression"]["R@10"] > 0


def test_plots_return_figures_draw_into_a_given_ax_and_show_only_when_asked(
    informative, tmp_path, monkeypatch
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.figure import Figure

    from histokg import pl

    results, panel, _ = informative
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    gene = results["genes"]["hvg"][0]
    r = results["per_gene_pearson"]["knn"]["S3"]
    fig = pl.spatial_genes(panel, [gene], "S3")  # measured and kNN-predicted, each with a colour bar
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert isinstance(pl.pearson_hist(r, tmp_path / "h.png"), Figure)
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shown == []  # not an interactive session: nothing is shown (a test never blocks)

    given, axes = plt.subplots(1, 3)
    assert pl.pearson_hist(r, ax=axes[0]) is given and axes[0].patches
    assert pl.spatial_genes(panel, [gene], "S3", layers=("pred_knn",), ax=axes[1]) is given
    assert axes[1].collections and axes[1].get_title().startswith(f"{gene} predicted (pred_knn) r=")
    tiny = ad.AnnData(obs=pd.DataFrame({"c": pd.Categorical(list("abab"))}, index=list("wxyz")))
    tiny.obsm["X_umap"] = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert pl.umap(tiny, ["c"], ax=axes[2]) is given and axes[2].get_title() == "c"
    with pytest.raises(InputError, match="one-panel plot, this one has 2 panels"):
        pl.spatial_genes(panel, [gene], "S3", ax=axes[1])
    assert shown == []
    pl.pearson_hist(r, show=True)
    assert shown == [True]
    plt.close("all")


@pytest.mark.parametrize("chose, warned", [(True, True), (np.False_, False), (None, True)])
def test_validation_slide_warning_follows_whether_validation_chose_the_checkpoint(
    study, tmp_path, chose, warned
):
    """A held-out slide that validated the run warns only if it chose the checkpoint (best.pt, an
    early-stopped last.pt); a last.pt that ran its fixed epochs does not. Older files (no flag) warn."""
    from histokg.heldout import evaluate_embedded

    adata = with_embeddings(study.copy(), informative=True, seed=3)
    params = adata.uns["histokg"]["params"]
    params.update(train_slides=["S1", "S2"], val_slides=["S3"])
    if chose is not None:
        params["validation_chose"] = chose  # as read back from an .h5ad: numpy's bool
    results = evaluate_embedded(adata, tmp_path / "eval", heldout_libs=["S3"], k=5, alpha=1.0)
    assert bool(results["warnings"]) is warned
