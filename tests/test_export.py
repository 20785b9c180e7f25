"""histokg export geojson | spatialdata: spots and tiles for QuPath and SpatialData, read back.

On the session's synthetic study (round Visium spots with counts on an OpenSlide pyramid) and the
tissue tiles of one of its slides (squares); no model needed.
"""

from __future__ import annotations

import json
import math

import geojson
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from histokg.cli import cli
from histokg.errors import InputError
from histokg.export.geojson import to_geojson, write_geojson
from histokg.export.spatialdata import export_spatialdata
from histokg.keys import Key, SData
from histokg.st.contract import write_h5ad
from histokg.st.pairing import PairingConfig
from histokg.tl.embed import tile_adata


@pytest.fixture(scope="module")
def section(synth_adata):
    adata = synth_adata[synth_adata.obs[Key.obs.library_id] == "S3"].copy()
    adata.obs[Key.obs.cluster] = pd.Categorical((np.arange(adata.n_obs) % 3).astype(str))
    return adata


@pytest.fixture(scope="module")
def tiles(synth_study):
    return tile_adata(synth_study / "slides" / "S3.tiff", PairingConfig(patch_um=112, patch_px=56))


def _diameter(adata):
    lib = str(adata.obs[Key.obs.library_id].iloc[0])
    return adata.uns["spatial"][lib]["scalefactors"][Key.scalefactors.spot_diameter_fullres]


def test_geojson_spots_are_valid_circles_with_measurements(section, tmp_path):
    path = write_geojson(section, tmp_path / "s3.geojson", object_type="annotation", genes=["CD3E", "EPCAM"])
    collection = geojson.loads(path.read_text())  # read back through the geojson package
    assert collection.is_valid, collection.errors()
    assert len(collection["features"]) == section.n_obs
    feature = collection["features"][0]
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    assert (ring[0] == ring[-1]).all() and len(ring) == 33
    centre = section.obsm[Key.obsm.spatial][0]
    np.testing.assert_allclose(ring[:-1].mean(axis=0), centre, atol=0.05)
    np.testing.assert_allclose(np.linalg.norm(ring - centre, axis=1), _diameter(section) / 2, atol=0.05)
    props = feature["properties"]
    assert props["objectType"] == "annotation" and props["name"] == section.obs_names[0]
    assert set(props["measurements"]) == {"CD3E", "EPCAM", "cluster"}
    assert props["classification"]["name"] == "cluster 0"
    assert len(props["classification"]["color"]) == 3
    colours = {tuple(f["properties"]["classification"]["color"]) for f in collection["features"]}
    assert len(colours) == 3  # one colour per cluster


def test_geojson_tiles_are_squares_and_render_over_the_thumbnail(tiles, tmp_path):
    from histokg import pl

    collection = to_geojson(tiles)
    assert geojson.loads(json.dumps(collection)).is_valid
    ring = np.asarray(collection["features"][0]["geometry"]["coordinates"][0])
    assert len(ring) == 5
    side = np.ptp(ring, axis=0)
    np.testing.assert_allclose(side, _diameter(tiles), atol=0.02)
    entry = tiles.uns["spatial"]["S3"]
    png = tmp_path / "overlay.png"
    pl.geojson_overlay(
        collection,
        entry["images"]["hires"],
        entry["scalefactors"][Key.scalefactors.tissue_hires_scalef],
        path=png,
    )
    assert png.stat().st_size > 10_000


def test_geojson_of_several_slides_needs_a_library(synth_adata):
    with pytest.raises(InputError, match="choose one with --library-id"):
        to_geojson(synth_adata)
    assert len(to_geojson(synth_adata, library_id="S2")["features"]) == int(
        (synth_adata.obs["library_id"] == "S2").sum()
    )


def test_spatialdata_round_trip_query_and_plot(section, tmp_path):
    import spatialdata
    from spatialdata.transformations import get_transformation

    path = export_spatialdata(section, tmp_path / "s3.zarr")
    sdata = spatialdata.read_zarr(path)
    image, shapes = "S3_full_image", "S3_shapes"
    assert set(sdata.images) == {image} and set(sdata.shapes) == {shapes} and set(sdata.tables) == {"table"}
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (
        attrs["region"] == shapes
        and attrs["region_key"] == "region"
        and attrs["instance_key"] == "instance_id"
    )
    assert list(table.obs[SData.instance_key]) == list(sdata.shapes[shapes].index)
    assert "histokg_region" in table.obs  # the study's ground-truth region, moved off SpatialData's key
    np.testing.assert_allclose(sdata.shapes[shapes]["radius"], _diameter(section) / 2)
    xy = np.column_stack([sdata.shapes[shapes].geometry.x, sdata.shapes[shapes].geometry.y])
    np.testing.assert_allclose(xy, section.obsm[Key.obsm.spatial])
    mpp = section.uns["spatial"]["S3"]["metadata"][Key.metadata.mpp]
    scale = get_transformation(sdata.shapes[shapes], to_coordinate_system="microns")
    np.testing.assert_allclose(scale.scale, [mpp, mpp])
    level0 = sdata.images[image]["scale0"]["image"]
    assert level0.shape[0] == 3 and level0.dtype == np.uint8
    # a bounding box in microns keeps only the spots inside it, and their table rows
    x0, y0 = (xy.min(axis=0) * mpp).tolist()
    box = spatialdata.bounding_box_query(
        sdata,
        axes=("x", "y"),
        min_coordinate=[x0 - 1, y0 - 1],
        max_coordinate=[x0 + 300, y0 + 300],
        target_coordinate_system="microns",
        filter_table=True,
    )
    inside = ((xy * mpp >= [x0 - 1, y0 - 1]) & (xy * mpp <= [x0 + 300, y0 + 300])).all(axis=1)
    assert 0 < len(box.shapes[shapes]) <= section.n_obs and len(box.shapes[shapes]) >= inside.sum()
    assert box.tables["table"].n_obs == len(box.shapes[shapes])


@pytest.mark.slow
def test_spatialdata_renders_with_spatialdata_plot(section, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    sdata = spatialdata.read_zarr(export_spatialdata(section, tmp_path / "s3.zarr"))
    fig, ax = plt.subplots(figsize=(5, 5))
    sdata.pl.render_images("S3_full_image").pl.render_shapes(
        "S3_shapes", color="EPCAM", fill_alpha=0.7
    ).pl.show(ax=ax, coordinate_systems="microns")
    fig.savefig(tmp_path / "plot.png")
    plt.close(fig)
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_cli_exports_and_refusals(section, tmp_path):
    h5ad = write_h5ad(section, tmp_path / "s3.h5ad")
    out = tmp_path / "s3.geojson"
    runner = CliRunner()
    ok = runner.invoke(
        cli, ["export", "geojson", str(h5ad), "-o", str(out), "--genes", "CD3E"], catch_exceptions=False
    )
    assert ok.exit_code == 0, ok.output
    assert set(json.loads(out.read_text())["features"][0]["properties"]["measurements"]) == {
        "CD3E",
        "cluster",
    }
    with pytest.raises(InputError, match="already exists"):
        runner.invoke(cli, ["export", "geojson", str(h5ad), "-o", str(out)], catch_exceptions=False)
    zarr = tmp_path / "s3.zarr"
    ok = runner.invoke(
        cli, ["export", "spatialdata", str(h5ad), "-o", str(zarr), "--no-image"], catch_exceptions=False
    )
    assert ok.exit_code == 0, ok.output
    with pytest.raises(InputError, match="already exists"):
        runner.invoke(cli, ["export", "spatialdata", str(h5ad), "-o", str(zarr)], catch_exceptions=False)
    ok = runner.invoke(
        cli, ["export", "spatialdata", str(h5ad), "-o", str(zarr), "--overwrite"], catch_exceptions=False
    )
    assert ok.exit_code == 0, ok.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s3.zarr")]  # no temporary left behind
    assert math.isfinite(json.loads(out.read_text())["features"][0]["properties"]["measurements"]["CD3E"])
