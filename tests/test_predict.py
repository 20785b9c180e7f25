"""histokg predict: H&E-only slides -> predicted genes, pathways, clusters and uncertainty; and its CLI.

On the session's synthetic study with the tiny checkpoint and the random KG bundle of the retrieval tests;
the reference is sections S1-S2 embedded with that checkpoint, the query slide S3 (its image alone).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from retrieval_fixtures import kg_bundle, reference_h5ad, retrieval_ckpt  # noqa: F401  (session fixtures)

from histokg import keys
from histokg.checkpoint import load_model
from histokg.cli import cli, main
from histokg.errors import InputError
from histokg.keys import Key
from histokg.predict.grid import hex_centres, hex_spots_adata
from histokg.predict.slide import PredictConfig, predict_slide
from histokg.st.contract import read_h5ad, write_h5ad

_CACHE: dict = {}


@pytest.fixture(scope="module")
def model(retrieval_ckpt):  # noqa: F811
    return load_model(retrieval_ckpt)


@pytest.fixture(scope="module")
def reference(reference_h5ad):  # noqa: F811  (S1-S2 embedded with the checkpoint, shared with the app tests)
    return reference_h5ad


@pytest.fixture(scope="module")
def slide(synth_study):
    return synth_study / "slides" / "S3.tiff"


@pytest.fixture(scope="module")
def predicted_hex(slide, model, reference, kg_bundle):  # noqa: F811
    cfg = PredictConfig(spots="hex", method="blend", n_pathways=8)
    return predict_slide(slide, model, read_h5ad(reference), cfg, kg_bundle=kg_bundle)


def test_hex_grid_is_visium_like():
    grid = hex_centres(1000, 1000, 100)
    xy, row, col = grid[:, :2], grid[:, 2], grid[:, 3]
    assert set(np.unique(col % 2 == row % 2)) == {
        True
    }  # Visium's doubled columns: row and column parity agree
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.allclose(d.min(axis=1), 100)  # every spot's nearest neighbour is one pitch away
    interior = (xy[:, 0] > 150) & (xy[:, 0] < 850) & (xy[:, 1] > 150) & (xy[:, 1] < 850)
    assert (np.isclose(d[interior], 100).sum(axis=1) == 6).all()  # six neighbours: a hexagonal lattice
    assert math.isclose(np.diff(np.unique(xy[:, 1]))[0], 100 * math.sqrt(3) / 2)


def test_a_pseudo_spot_grid_is_counted_against_the_budget_before_it_is_laid(slide, model, monkeypatch):
    import histokg.predict.grid as grid

    monkeypatch.setattr(grid, "detect_tissue", lambda *a, **k: pytest.fail("the mask was computed"))
    with pytest.raises(InputError, match="hex grid of pseudo-spots: .* tiles, more than the 1,000 allowed"):
        monkeypatch.setattr(grid.budget, "MAX_TILES", 1_000)
        hex_spots_adata(slide, model.pairing.mask, spot_um=1, pitch_um=1)


def test_hex_spots_on_tissue_follow_the_contract(slide, model):
    spots = hex_spots_adata(slide, model.pairing.mask, spot_um=55, pitch_um=100)
    meta = spots.uns["spatial"]["S3"]["metadata"]
    assert spots.n_obs > 20 and spots.n_vars == 0
    mpp = meta[Key.metadata.mpp]
    diameter = spots.uns["spatial"]["S3"]["scalefactors"][Key.scalefactors.spot_diameter_fullres]
    assert math.isclose(diameter * mpp, 55)
    assert (spots.obs[Key.obs.tissue_fraction] >= 0.5).all()
    xy = spots.obsm[Key.obsm.spatial]
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert math.isclose(np.median(d.min(axis=1)) * mpp, 100, rel_tol=1e-6)


def test_predict_slide_writes_predictions_uncertainty_pathways_clusters(predicted_hex, model):
    out = predicted_hex
    assert list(out.var_names) == list(model.genes)
    for key in (
        Key.layers.pred_knn,
        Key.layers.pred_ridge,
        Key.layers.pred_blend,
        Key.layers.pred_disagreement,
    ):
        assert np.isfinite(out.layers[key]).all(), key
    np.testing.assert_allclose(out.X, out.layers[Key.layers.pred_blend])
    np.testing.assert_allclose(
        out.layers[Key.layers.pred_blend],
        (out.layers[Key.layers.pred_knn] + out.layers[Key.layers.pred_ridge]) / 2,
        atol=1e-5,
    )
    sd = out.layers[keys.sd_key(Key.layers.pred_blend)]
    hw = out.layers[keys.interval_key(Key.layers.pred_blend)]
    assert (sd >= 0).all() and (hw >= 0).all() and hw.mean() > 0
    record = out.uns[Key.uns.histokg][Key.histokg.predict]
    z = record["interval_scale"]
    np.testing.assert_allclose(hw, z * sd, rtol=1e-5)
    assert out.uns[Key.uns.histokg][Key.histokg.params][Key.params.checkpoint_sha256] == model.sha256
    assert record["reference_libraries"] == ["S1", "S2"]
    pathways = out.obsm[Key.obsm.pred_pathways]
    assert isinstance(pathways, pd.DataFrame) and pathways.shape == (out.n_obs, 8)
    assert all(c.startswith("pathway:") for c in pathways.columns)
    assert np.isfinite(pathways.to_numpy()).all()
    assert out.obsm[keys.interval_key(Key.obsm.pred_pathways)].shape == pathways.shape
    assert out.obs[Key.obs.cluster].nunique() >= 2


def test_tiles_prediction_and_a_reference_of_another_checkpoint(slide, model, reference):
    out = predict_slide(slide, model, read_h5ad(reference), PredictConfig(n_pathways=0))
    assert out.uns["spatial"]["S3"]["metadata"][Key.metadata.reader] == "tiles"
    assert Key.layers.pred_knn in out.layers and Key.obsm.pred_pathways not in out.obsm
    ref = read_h5ad(reference)
    ref.uns[Key.uns.histokg][Key.histokg.params][Key.params.checkpoint_sha256] = "0" * 64
    with pytest.raises(Exception, match="embedded with checkpoint 000000000000"):
        predict_slide(slide, model, ref)


def test_several_reference_files_combine_and_another_checkpoint_is_named(reference, model, tmp_path):
    from histokg.tl.embed import read_embedded
    from histokg.tl.predict import embedding_checkpoint

    whole = read_h5ad(reference)
    lib = whole.obs[Key.obs.library_id].astype(str)
    parts = []
    for name in ("S1", "S2"):
        parts.append(write_h5ad(whole[(lib == name).to_numpy()].copy(), tmp_path / f"{name}.h5ad"))
    combined = read_embedded(parts)
    assert list(combined.obs_names) == list(whole.obs_names)
    np.testing.assert_array_equal(combined.obsm[keys.IMAGE], whole.obsm[keys.IMAGE])
    assert embedding_checkpoint(combined) == embedding_checkpoint(whole) == model.sha256  # the params survive
    other = read_h5ad(parts[1])
    other.uns[Key.uns.histokg][Key.histokg.params][Key.params.checkpoint_sha256] = "f" * 64
    moved = write_h5ad(other, tmp_path / "other.h5ad")
    with pytest.raises(
        InputError, match=f"{moved} was embedded with checkpoint ffffffffffff, .*S1.h5ad with"
    ):
        read_embedded([parts[0], moved])


def test_cli_predict_with_exports_then_refuses_to_overwrite(
    slide,
    retrieval_ckpt,  # noqa: F811
    reference,
    kg_bundle,  # noqa: F811
    tmp_path,
):
    import geojson
    import spatialdata

    out = tmp_path / "pred"
    args = ["predict", str(slide), "--checkpoint", str(retrieval_ckpt), "--reference", str(reference)]
    args += ["-o", str(out), "--spots", "hex", "--pathways", "4", "--kg-bundle", str(kg_bundle)]
    result = CliRunner().invoke(cli, [*args, "--geojson", "--spatialdata"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = out / "S3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "predicted.geojson",
        "predicted.h5ad",
        "predicted.zarr",
    ]
    adata = read_h5ad(folder / "predicted.h5ad")
    collection = geojson.loads((folder / "predicted.geojson").read_text())
    assert collection.is_valid and len(collection["features"]) == adata.n_obs
    measured = collection["features"][0]["properties"]["measurements"]
    gene, pathway = adata.var_names[0], adata.obsm[Key.obsm.pred_pathways].columns[0]
    assert {gene, f"{gene} hw90", pathway, f"{pathway} hw90", "cluster"} <= set(measured)
    assert measured[gene] == pytest.approx(float(adata.X[0, 0]), abs=1e-6)
    sdata = spatialdata.read_zarr(folder / "predicted.zarr")
    table = sdata.tables["table"]
    assert table.n_obs == adata.n_obs and Key.layers.pred_knn in table.layers
    assert set(sdata.images) == {"S3_full_image"} and set(sdata.shapes) == {"S3_shapes"}
    with pytest.raises(Exception, match="already holds predictions"):
        CliRunner().invoke(cli, args, catch_exceptions=False)
    assert CliRunner().invoke(cli, [*args, "--overwrite"], catch_exceptions=False).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["predicted.h5ad"]  # the earlier exports went


def test_cli_predict_slide_without_mpp_is_one_line_exit_2(tmp_path, retrieval_ckpt, reference, slide, capsys):  # noqa: F811
    plain = tmp_path / "plain.png"
    Image.new("RGB", (400, 300), "white").save(plain)
    good = tmp_path / "S3.tiff"
    shutil.copy(slide, good)
    out = tmp_path / "pred"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                str(good),
                str(plain),
                "--checkpoint",
                str(retrieval_ckpt),
                "--reference",
                str(reference),
                "-o",
                str(out),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain.png" in err and "microns-per-pixel" in err
    assert not out.exists()  # checked before any compute: nothing written, not even the good slide's folder
