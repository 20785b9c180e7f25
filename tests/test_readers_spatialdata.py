"""``histokg read spatialdata`` and ``histokg embed-spatialdata`` on stores named as spatialdata-io names them.

Visium stores are written by spatialdata-io itself (``spatialdata_io.visium``) from the synthetic study and
from the real Space Ranger 1.0 layout in ../shared/data/formats. spatialdata-io's Visium HD reader needs a
``feature_slice.h5`` and its Xenium reader a full Xenium bundle, which no test data here has: those stores
are built with the spatialdata API, element by element as spatialdata-io's ``visium_hd`` and ``xenium``
build them (names, shapes, transformations, table keys).
"""

from __future__ import annotations

import warnings

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from PIL import Image

from histokg.cli import cli, main
from histokg.errors import InputError
from histokg.st import validate
from histokg.st.readers.spatialdata import SpatialDataReader
from histokg.wsi import open_slide

spatialdata = pytest.importorskip("spatialdata")
from spatialdata import SpatialData  # noqa: E402
from spatialdata.models import Image2DModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Affine, Identity, Scale  # noqa: E402

SLIDE_MPP = 0.5  # the synthetic study's slides
XENIUM_PX = 0.2125  # Xenium's morphology pixel size (um)


def write_store(sdata, path, reader: str | None):
    if reader:
        sdata.attrs["spatialdata_io_reader"] = reader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(path)
    return path


def slide_array(slide) -> np.ndarray:
    with open_slide(slide) as s:
        return s.read_level(0)


def counts_table(n: int, genes, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(rng.poisson(0.5, (n, len(genes))).astype(np.int32))
    return ad.AnnData(
        X=x, var=pd.DataFrame({"gene_ids": [f"ENSG{i:05d}" for i in range(len(genes))]}, index=genes)
    )


def hd_store(path, slide, genes, *, dataset_id="hd1", bins=(16, 8), origin=(1000, 800), n=8):
    """As ``spatialdata_io.visium_hd`` writes it: ``{id}_full_image``, ``{id}_hires_image``, bins as squares
    ``{id}_square_016um`` (circles buffered with square caps) in full-resolution pixels, tables ``square_016um``
    (region_key ``region``, instance_key ``location_id``)."""
    image = slide_array(slide)
    hires_scalef = 0.25
    tf = {
        dataset_id: Identity(),
        f"{dataset_id}_downscaled_hires": Scale([hires_scalef, hires_scalef], axes=("x", "y")),
    }
    images = {
        f"{dataset_id}_full_image": Image2DModel.parse(
            image.transpose(2, 0, 1),
            dims=("c", "y", "x"),
            scale_factors=[2, 2],
            transformations={dataset_id: Identity()},
        ),
        f"{dataset_id}_hires_image": Image2DModel.parse(
            image[::4, ::4].transpose(2, 0, 1),
            dims=("c", "y", "x"),
            transformations={
                f"{dataset_id}_downscaled_hires": Identity(),
                dataset_id: Scale([1 / hires_scalef, 1 / hires_scalef], axes=("x", "y")),
            },
        ),
    }
    shapes, tables = {}, {}
    for k, bin_um in enumerate(bins):
        side = bin_um / SLIDE_MPP
        rows, cols = np.divmod(np.arange(n * n), n)
        centres = np.column_stack([origin[0] + (cols + 0.5) * side, origin[1] + (rows + 0.5) * side])
        circles = ShapesModel.parse(
            centres, geometry=0, radius=side / 2, index=np.arange(n * n), transformations=tf
        )
        name = f"{dataset_id}_square_{bin_um:03d}um"
        shapes[name] = ShapesModel.parse(
            gpd.GeoDataFrame(geometry=circles.buffer(side / 2, cap_style=3)), transformations=tf
        )
        table = counts_table(n * n, genes, seed=k)
        table.obs_names = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
        table.obs["in_tissue"] = 1
        table.obs["array_row"], table.obs["array_col"] = rows, cols
        table.obs["location_id"] = np.arange(n * n)
        table.obs["region"] = pd.Categorical([name] * (n * n))
        tables[f"square_{bin_um:03d}um"] = TableModel.parse(
            table, region=name, region_key="region", instance_key="location_id"
        )
    sdata = SpatialData(images=images, shapes=shapes, tables=tables)
    return write_store(sdata, path, "visium_hd"), centres


def xenium_store(path, slide, genes, *, n=40, he=True):
    """As ``spatialdata_io.xenium`` writes it: ``morphology_focus`` (uint16, ``global`` = its pixels),
    ``cell_circles`` in microns (``Scale(1 / pixel_size)`` to ``global``), table ``table`` (region
    ``cell_circles``, instance_key ``cell_id``), and an aligned H&E (``he_image``, affine to ``global``)."""
    image = slide_array(slide)[800:1400, 1000:1600]  # 600 x 600 px H&E at 0.5 um/px = 300 um
    grey = (255 - image.mean(axis=2)).astype(np.uint16) * 40
    zoom = SLIDE_MPP / XENIUM_PX
    side = int(600 * zoom)
    morph = np.asarray(Image.fromarray(grey.astype(np.uint8)).resize((side, side))).astype(np.uint16)[None]
    rng = np.random.default_rng(3)
    centres_um = rng.uniform(20, 280, (n, 2))
    radius_um = rng.uniform(4, 7, n)
    cell_ids = [f"aaa{i:04d}-1" for i in range(n)]
    circles = ShapesModel.parse(
        centres_um,
        geometry=0,
        radius=radius_um,
        index=pd.Index(cell_ids),
        transformations={"global": Scale([1 / XENIUM_PX, 1 / XENIUM_PX], axes=("x", "y"))},
    )
    table = counts_table(n, genes, seed=5)
    table.obs_names = cell_ids
    table.obs["cell_id"] = cell_ids
    table.obs["cell_area"] = np.pi * radius_um**2
    table.obs["region"] = pd.Categorical(["cell_circles"] * n)
    images = {
        "morphology_focus": Image2DModel.parse(
            morph, dims=("c", "y", "x"), transformations={"global": Identity()}
        )
    }
    if he:  # H&E pixels -> morphology pixels, as Xenium Explorer's alignment matrix
        matrix = np.array([[zoom, 0, 0], [0, zoom, 0], [0, 0, 1]])
        images["he_image"] = Image2DModel.parse(
            image.transpose(2, 0, 1),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations={"global": Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))},
        )
    tables = {
        "table": TableModel.parse(table, region="cell_circles", region_key="region", instance_key="cell_id")
    }
    sdata = SpatialData(images=images, shapes={"cell_circles": circles}, tables=tables)
    return write_store(sdata, path, "xenium"), centres_um, radius_um


@pytest.fixture(scope="module")
def genes(synth_adata):
    return list(synth_adata.var_names)


@pytest.fixture(scope="module")
def hd(synth_study, genes, tmp_path_factory):
    path = tmp_path_factory.mktemp("hd") / "hd1.zarr"
    return hd_store(path, synth_study / "slides" / "S1.tiff", genes)


@pytest.fixture(scope="module")
def xenium(synth_study, genes, tmp_path_factory):
    path = tmp_path_factory.mktemp("xenium") / "xe1.zarr"
    return xenium_store(path, synth_study / "slides" / "S2.tiff", genes)


# --------------------------------------------------------------------------- Visium (spatialdata-io)


def test_visium_store_from_spatialdata_io_matches_the_visium_reader(synth_study, tmp_path):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    from histokg.st.readers.visium import VisiumReader

    section, slide = synth_study / "sections" / "S1", synth_study / "slides" / "S1.tiff"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = spatialdata_io.visium(section, dataset_id="S1", fullres_image_file=slide.resolve())
        store.write(tmp_path / "S1.zarr")
    direct = VisiumReader(section, slide=slide).read()
    # without a slide file: the full image's pixels, MPP from the 55 um spots, no slide recorded
    bare = SpatialDataReader(tmp_path / "S1.zarr").read()
    validate(bare)
    meta = bare.uns["spatial"]["S1"]["metadata"]
    assert meta["spatialdata_image"] == "S1_full_image" and meta["source_image_path"] == ""
    assert meta["mpp"] == pytest.approx(SLIDE_MPP) and meta["mpp_source"].startswith("spot diameter")
    assert (bare.obs_names == direct.obs_names).all()
    np.testing.assert_allclose(bare.obsm["spatial"], direct.obsm["spatial"], atol=1e-6)
    assert (bare.layers["counts"] != direct.layers["counts"]).nnz == 0
    # the zarr image written out as a pyramid: OpenSlide reads it, same pixels where JPEG allows
    out = tmp_path / "S1_from_zarr.tiff"
    written = SpatialDataReader(tmp_path / "S1.zarr", slide_out=out).read()
    assert written.uns["spatial"]["S1"]["metadata"]["source_image_path"] == str(out.resolve())
    with open_slide(out) as a, open_slide(slide) as b:
        assert a.dimensions == b.dimensions and a.mpp == pytest.approx(SLIDE_MPP)
        diff = np.abs(
            a.read_region((900, 700), 0, (256, 256)).astype(int) - b.read_region((900, 700), 0, (256, 256))
        )
        assert diff.mean() < 6
    # the hires image chosen by name: spots in its pixels, MPP scaled by its scale factor
    hires = SpatialDataReader(tmp_path / "S1.zarr", image="S1_hires_image").read()
    scalef = hires.uns["spatial"]["S1"]["metadata"]["mpp"] / SLIDE_MPP
    np.testing.assert_allclose(hires.obsm["spatial"] * scalef, direct.obsm["spatial"], rtol=1e-6)


def test_real_visium_layout_through_spatialdata_io(shared_data, tmp_path):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    from histokg.st.readers.visium import VisiumReader

    outs = shared_data / "formats" / "visium_v1_scanpy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spatialdata_io.visium(outs, dataset_id="v1").write(tmp_path / "v1.zarr")
    adata = SpatialDataReader(tmp_path / "v1.zarr").read()
    validate(adata)
    meta = adata.uns["spatial"]["v1"]["metadata"]
    assert meta["spatialdata_image"] == "v1_hires_image"  # no full-resolution image in this layout
    direct = VisiumReader(outs, library_id="v1").read()  # also on its hires PNG
    assert (adata.obs_names == direct.obs_names).all()
    np.testing.assert_allclose(adata.obsm["spatial"], direct.obsm["spatial"] * 0.150015, rtol=1e-6)
    assert meta["spot_diameter_um"] == pytest.approx(55.0)
    assert meta["mpp"] == pytest.approx(direct.uns["spatial"]["v1"]["metadata"]["mpp"] / 0.150015, rel=1e-6)


# --------------------------------------------------------------------------- Visium HD and Xenium


def test_visium_hd_bins_on_the_full_image(hd, synth_study):
    path, centres = hd
    adata = SpatialDataReader(path, table="square_008um", slide=synth_study / "slides" / "S1.tiff").read()
    validate(adata)
    meta = adata.uns["spatial"]["hd1"]["metadata"]
    assert meta["spatialdata_region"] == "hd1_square_008um" and meta["spot_shape"] == "square"
    assert meta["spatialdata_image"] == "hd1_full_image"  # finer than the hires image
    assert meta["mpp"] == pytest.approx(SLIDE_MPP) and meta["spot_diameter_um"] == pytest.approx(8.0)
    np.testing.assert_allclose(adata.obsm["spatial"], centres, atol=1e-6)
    # on the hires image, with the MPP from the bins alone (8 um over their side in its pixels)
    hires = SpatialDataReader(path, table="square_016um", image="hd1_hires_image").read()
    hmeta = hires.uns["spatial"]["hd1"]["metadata"]
    assert hmeta["mpp"] == pytest.approx(SLIDE_MPP * 4) and hmeta["mpp_source"].endswith(
        "um bins over their side"
    )
    assert hmeta["spot_diameter_um"] == pytest.approx(16.0)


def test_xenium_cells_on_morphology_and_on_the_aligned_he(xenium):
    path, centres_um, radius_um = xenium
    morph = SpatialDataReader(path).read()
    meta = morph.uns["spatial"]["xe1"]["metadata"]
    assert meta["spatialdata_image"] == "morphology_focus"  # finest: 0.2125 um/px
    assert meta["mpp"] == pytest.approx(XENIUM_PX) and "microns" in meta["mpp_source"]
    np.testing.assert_allclose(morph.obsm["spatial"], centres_um / XENIUM_PX, rtol=1e-9)
    assert meta["spot_diameter_um"] == pytest.approx(np.median(2 * radius_um))
    assert morph.obs["spatialdata_instance_id"].tolist() == [f"aaa{i:04d}-1" for i in range(len(centres_um))]
    he = SpatialDataReader(path, image="he_image").read()
    hmeta = he.uns["spatial"]["xe1"]["metadata"]
    assert hmeta["mpp"] == pytest.approx(SLIDE_MPP)
    np.testing.assert_allclose(he.obsm["spatial"], centres_um / SLIDE_MPP, rtol=1e-9)
    assert he.uns["spatial"]["xe1"]["images"]["hires"].shape[2] == 3


# --------------------------------------------------------------------------- bad input


def run_cli(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize(
    "case",
    [
        "plain folder",
        "zarr without spatialdata",
        "two tables",
        "no such table",
        "no such image",
        "labels region",
        "zero scale",
        "no mpp",
    ],
)
def test_bad_stores_are_one_line_and_write_nothing(case, hd, xenium, tmp_path, capsys):
    import zarr

    hd_path, _ = hd
    args: list[str] = []
    if case == "plain folder":
        (store := tmp_path / "plain.zarr").mkdir()
        (store / "notes.txt").write_text("x")
        expected = "not a SpatialData store"
    elif case == "zarr without spatialdata":
        store = tmp_path / "other.zarr"
        zarr.open_group(str(store), mode="w").create_array("a", shape=(2,), dtype="i4")
        expected = "not a SpatialData store (a zarr group without spatialdata_attrs"
    elif case == "two tables":
        store, expected = hd_path, "2 tables (square_008um, square_016um); choose one with --table"
    elif case == "no such table":
        store, args = hd_path, ["--table", "square_002um"]
        expected = "no table 'square_002um'; the tables are square_008um, square_016um"
    elif case == "no such image":
        store, args = hd_path, ["--table", "square_008um", "--image", "hd1_lowres_image"]
        expected = "no image 'hd1_lowres_image'; the images are hd1_full_image, hd1_hires_image"
    elif case == "labels region":
        from spatialdata.models import Labels2DModel

        store = tmp_path / "labels.zarr"
        labels = Labels2DModel.parse(np.zeros((20, 20), np.int32), dims=("y", "x"))
        table = counts_table(3, ["A", "B"], 0)
        table.obs["region"] = pd.Categorical(["cell_labels"] * 3)
        table.obs["label"] = [1, 2, 3]
        tables = {
            "table": TableModel.parse(table, region="cell_labels", region_key="region", instance_key="label")
        }
        write_store(SpatialData(labels={"cell_labels": labels}, tables=tables), store, None)
        expected = "table 'table' must annotate one shapes element (spots, bins or cells); it annotates 'cell_labels' (labels)"
    elif case == "zero scale":  # a transformation that maps every spot onto one point
        store = tmp_path / "zero.zarr"
        circles = ShapesModel.parse(
            np.array([[10.0, 10], [30, 30]]),
            geometry=0,
            radius=4.0,
            transformations={"global": Scale([0.0, 0.0], axes=("x", "y"))},
        )
        table = counts_table(2, ["A", "B"], 0)
        table.obs["region"] = pd.Categorical(["spots"] * 2)
        table.obs["spot_id"] = [0, 1]
        image = Image2DModel.parse(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"))
        tables = {
            "table": TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
        }
        write_store(SpatialData(images={"img": image}, shapes={"spots": circles}, tables=tables), store, None)
        expected = "shapes 'spots': its transformation to coordinate system 'global' is not usable (scale 0"
    else:  # circles without any calibration: not a spatialdata-io Visium or Xenium store, no microns system
        store = tmp_path / "nompp.zarr"
        circles = ShapesModel.parse(np.array([[10.0, 10], [30, 30], [50, 50]]), geometry=0, radius=4.0)
        table = counts_table(3, ["A", "B"], 0)
        table.obs["region"] = pd.Categorical(["spots"] * 3)
        table.obs["spot_id"] = [0, 1, 2]
        image = Image2DModel.parse(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"))
        tables = {
            "table": TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
        }
        write_store(SpatialData(images={"img": image}, shapes={"spots": circles}, tables=tables), store, None)
        args = ["--slide-out", str(tmp_path / "img.tiff")]
        expected = "the MPP of image 'img' is not recorded"
    out = tmp_path / "out.h5ad"
    assert run_cli(["read", "spatialdata", str(store), *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not out.exists() and not (tmp_path / "img.tiff").exists()


def test_a_slide_of_another_size_is_refused(hd, synth_study):
    path, _ = hd
    with pytest.raises(InputError, match=r"is 3000x2600 px but image 'hd1_hires_image' .* is 750x650 px"):
        SpatialDataReader(
            path, table="square_008um", image="hd1_hires_image", slide=synth_study / "slides" / "S1.tiff"
        ).read()


# --------------------------------------------------------------------------- embeddings back into the store


@pytest.fixture(scope="module")
def checkpoint(synth_study, tmp_path_factory):
    from test_train import tiny_cfg

    from histokg.train import train

    return train(tiny_cfg(synth_study, tmp_path_factory.mktemp("run"), "optim.epochs=1")).last_checkpoint


def test_hd_embeddings_written_into_the_store_and_read_back(synth_study, genes, checkpoint, tmp_path, capsys):
    import shutil

    path, _ = hd_store(tmp_path / "hd1.zarr", synth_study / "slides" / "S1.tiff", genes, n=6)
    before = {
        p.relative_to(path): p.read_bytes()
        for p in (path / "tables" / "square_016um").rglob("*")
        if p.is_file()
    }
    args = ["embed-spatialdata", str(path), "--checkpoint", str(checkpoint), "--table", "square_016um"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "36 observations embedded" in result.output
    back = spatialdata.read_zarr(path)
    table = back.tables["histokg_embeddings"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "hd1_square_016um" and attrs["instance_key"] == "instance_id"
    bins = back.tables["square_016um"]
    assert table.obs["instance_id"].tolist() == bins.obs["location_id"].tolist()
    assert (table.obs_names == bins.obs_names).all() and table.n_vars == 0
    emb = table.obsm["X_histokg"]
    assert emb.shape[0] == 36 and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    assert "X_histokg_expr" in table.obsm and table.uns["histokg"]["params"]["checkpoint_sha256"]
    assert set(back.shapes["hd1_square_016um"].index) >= set(table.obs["instance_id"])
    after = {
        p.relative_to(path): p.read_bytes()
        for p in (path / "tables" / "square_016um").rglob("*")
        if p.is_file()
    }
    assert after == before  # the bins' own table is untouched
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".hd1.zarr.") and p.is_dir()]
    # a second run is refused without --overwrite, and writes nothing
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "table 'histokg_embeddings' already exists; pass --overwrite" in capsys.readouterr().err
    # --overwrite replaces it; the name of the table being embedded is refused whatever
    assert CliRunner().invoke(cli, [*args, "--overwrite"], catch_exceptions=False).exit_code == 0
    with pytest.raises(SystemExit) as info:
        main([*args, "--name", "square_016um", "--overwrite"])
    assert info.value.code == 2 and "'square_016um' is an element histokg reads" in capsys.readouterr().err
    back = spatialdata.read_zarr(path)
    assert set(back.tables) == {"square_008um", "square_016um", "histokg_embeddings"}
    shutil.rmtree(path)
