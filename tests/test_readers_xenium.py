"""Xenium: transcripts counted in pseudo-spots on the named slide, and one-line errors for bad outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from readers_fixtures import XENIUM_GENES, rotation_alignment, write_alignment_csv, write_xenium

from histokg.cli import main
from histokg.errors import InputError
from histokg.st import read
from histokg.st.pairing import pair_spots
from histokg.st.readers.xenium import XeniumReader
from histokg.wsi import write_pyramid

SLIDE_MPP = 0.5  # the synthetic study's slides


def cli_error(capsys, *args) -> str:
    """``histokg ARGS`` through the console entry point: exit status 2 and one ``error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def xenium(tmp_path_factory, synth_study):
    """A Xenium output aligned to the synthetic slide S2 by a rotated, scaled, shifted matrix."""
    root = tmp_path_factory.mktemp("xenium")
    matrix = rotation_alignment(SLIDE_MPP, 0.2125, 30.0, (2500.0, 300.0))
    truth = write_xenium(
        root / "region1",
        region_slide_px=(600, 500, 2200, 1900),
        marker_slide_px=(1700, 800),
        matrix=matrix,
        slide_mpp=SLIDE_MPP,
    )
    alignment = write_alignment_csv(root / "he_imagealignment.csv", matrix)
    return root / "region1", synth_study / "slides" / "S2.tiff", alignment, truth


def test_pseudo_spots_count_the_high_quality_gene_transcripts(xenium):
    path, slide, alignment, truth = xenium
    adata = read("xenium", path, slide=slide, alignment=alignment, spot_um=100)
    t = truth.transcripts
    good = (t["qv"] >= 20) & t["is_gene"]
    assert int(adata.layers["counts"].sum()) == int(good.sum())
    assert (
        sorted(adata.var_names) == sorted(XENIUM_GENES)
        and not adata.var_names.str.startswith("NegControl").any()
    )
    per_gene = t[good].groupby("feature_name").size()
    got = pd.Series(np.asarray(adata.layers["counts"].sum(axis=0)).ravel(), index=adata.var_names)
    pd.testing.assert_series_equal(
        got.sort_index(), per_gene.sort_index(), check_names=False, check_dtype=False
    )
    assert adata.var.loc["MARKER", "gene_ids"].startswith("ENSG")  # from cell_feature_matrix.h5
    meta = adata.uns["spatial"]["region1"]["metadata"]
    assert meta["mpp"] == pytest.approx(SLIDE_MPP) and "alignment" in meta["mpp_source"]
    assert meta["n_transcripts"] == int(good.sum()) and meta["spot_shape"] == "square"
    assert meta["n_transcripts_control"] == int((~t["is_gene"]).sum())
    # the MARKER blob lands in the pseudo-spot over its slide position (through the inverse alignment)
    marker = np.asarray(adata[:, "MARKER"].layers["counts"].todense()).ravel()
    best = adata.obsm["spatial"][marker.argmax()]
    half_diagonal_px = 100 / SLIDE_MPP / np.sqrt(2)
    assert np.hypot(*(best - truth.marker_slide_px)) < half_diagonal_px + 10 / SLIDE_MPP
    assert marker.max() >= 0.9 * 400
    # cells lie in the left 60% of the region: spots with a cell are in tissue, the others are not
    n_cells = adata.obs["n_cells"].to_numpy()
    assert (adata.obs["in_tissue"].to_numpy(bool) == (n_cells > 0)).all() and 0 < (n_cells > 0).mean() < 1
    assert n_cells.sum() == 300
    # a lower quality threshold keeps more transcripts
    everything = read("xenium", path, slide=slide, alignment=alignment, spot_um=100, min_qv=0)
    assert int(everything.layers["counts"].sum()) == int(t["is_gene"].sum())


def test_spot_size_sets_the_grid_and_the_diameter(xenium):
    path, slide, alignment, _ = xenium
    small = XeniumReader(path, slide=slide, alignment=alignment, spot_um=55).read()
    large = XeniumReader(path, slide=slide, alignment=alignment, spot_um=100).read()
    assert small.n_obs > 2.5 * large.n_obs
    for adata, um in ((small, 55), (large, 100)):
        entry = adata.uns["spatial"]["region1"]
        assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(um / SLIDE_MPP)
        assert adata.obs_names[0].startswith(f"region1_s_{um}um_")
        # neighbouring pseudo-spots of one row are one spot side apart on the slide
        obs = adata.obs.reset_index(drop=True)
        a = obs.index[
            (obs["array_col"] == obs["array_col"].shift(-1) - 1)
            & (obs["array_row"] == obs["array_row"].shift(-1))
        ]
        d = np.hypot(*(adata.obsm["spatial"][a[0] + 1] - adata.obsm["spatial"][a[0]]))
        assert d == pytest.approx(um / SLIDE_MPP)


def test_morphology_image_without_alignment_and_names_stored_as_bytes(tmp_path):
    """The slide is the morphology image itself (identity): its MPP is experiment.xenium's pixel_size."""
    rng = np.random.default_rng(1)
    side = 1600
    image = np.full((side, side, 3), 235, np.uint8)
    pink = np.array([190, 110, 170])  # eosin-like tissue on white, so that the tissue mask finds it
    image[200:1400, 200:1400] = (pink + rng.integers(-20, 20, (1200, 1200, 3))).astype(np.uint8)
    slide = write_pyramid(image, tmp_path / "morphology_focus.tiff", mpp=0.2125)
    truth = write_xenium(
        tmp_path / "out",
        region_slide_px=(250, 250, 1350, 1350),
        marker_slide_px=(700, 700),
        n_transcripts=5000,
        names_as_bytes=True,
    )
    adata = XeniumReader(tmp_path / "out", slide=slide, spot_um=55).read()
    meta = adata.uns["spatial"]["out"]["metadata"]
    assert (
        meta["mpp"] == 0.2125
        and meta["mpp_source"] == f"{tmp_path / 'out' / 'experiment.xenium'} pixel_size (0.2125 um)"
    )
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    np.testing.assert_allclose(
        adata.obsm["spatial"], np.column_stack([(cols + 0.5), (rows + 0.5)]) * 55 / 0.2125
    )
    good = (truth.transcripts["qv"] >= 20) & truth.transcripts["is_gene"]
    assert int(adata.layers["counts"].sum()) == int(good.sum()) and "MARKER" in adata.var_names
    pair_spots(adata)
    # spot centres on the pink square are on the tissue mask, those on the white margin are not
    inside = ((adata.obsm["spatial"] > 200) & (adata.obsm["spatial"] < 1400)).all(axis=1)
    assert 0 < inside.sum() < adata.n_obs
    assert (adata.obs["on_tissue_mask"].to_numpy(bool) == inside).all()


def test_transcripts_table_lacking_a_column(xenium, tmp_path, capsys):
    path, slide, alignment, _ = xenium
    copy = tmp_path / "region1"
    shutil.copytree(path, copy)
    file = copy / "transcripts.parquet"
    pd.read_parquet(file).drop(columns=["qv"]).to_parquet(file)
    msg = cli_error(
        capsys, "read", "xenium", copy, "--slide", slide, "--alignment", alignment, "-o", tmp_path / "x.h5ad"
    )
    assert msg.startswith(
        f"error: {file}: missing column(s) ['qv']; a Xenium transcripts table has x_location, y_location "
        "(microns), feature_name and qv; found ['transcript_id', 'cell_id'"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "field 'pixel_size' is missing (microns per morphology-image pixel, 0.2125)"),
        (0, "pixel_size must be a positive number of microns per pixel (Xenium: 0.2125), got 0"),
        (
            "0.2125",
            "pixel_size must be a positive number of microns per pixel (Xenium: 0.2125), got '0.2125'",
        ),
    ],
)
def test_wrong_pixel_size_in_experiment_xenium(xenium, tmp_path, capsys, value, message):
    path, slide, alignment, _ = xenium
    copy = tmp_path / "region1"
    shutil.copytree(path, copy)
    file = copy / "experiment.xenium"
    experiment = json.loads(file.read_text())
    if value is None:
        experiment.pop("pixel_size")
    else:
        experiment["pixel_size"] = value
    file.write_text(json.dumps(experiment))
    msg = cli_error(
        capsys, "read", "xenium", copy, "--slide", slide, "--alignment", alignment, "-o", tmp_path / "x.h5ad"
    )
    assert msg == f"error: {file}: {message}"


def test_slide_that_does_not_fit_pixel_size_without_its_alignment(xenium, tmp_path, capsys):
    path, slide, _, _ = xenium
    msg = cli_error(capsys, "read", "xenium", path, "--slide", slide, "-o", tmp_path / "x.h5ad")
    assert msg == (
        f"error: {path / 'experiment.xenium'} pixel_size (0.2125 um): 0.2125 um/px, but slide {slide} records "
        "0.5 um/px in its own metadata (more than 10% apart); is it the image the data were registered to, with "
        "the alignment matrix that maps it onto the Xenium morphology image? Pass --mpp to override"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "1,0,0\n0,1,0\n",
            "expected a 3x3 affine matrix (3 lines of 3 comma-separated numbers, as Xenium Explorer exports), got 2x3",
        ),
        (
            "1,0,0\n0,one,0\n0,0,1\n",
            "expected a 3x3 affine matrix (3 lines of 3 comma-separated numbers, as Xenium Explorer exports); could not convert string 'one' to float64 at row 1, column 2.",
        ),
        ("1,0,0\n0,1,0\n0.5,0,1\n", "the last row of an affine matrix is 0, 0, 1; got [0.5, 0.0, 1.0]"),
        ("1,2,0\n2,4,0\n0,0,1\n", "the matrix is singular (it maps the slide onto a line or a point)"),
    ],
)
def test_bad_alignment_matrix(xenium, tmp_path, capsys, text, message):
    path, slide, _, _ = xenium
    bad = tmp_path / "alignment.csv"
    bad.write_text(text)
    msg = cli_error(
        capsys, "read", "xenium", path, "--slide", slide, "--alignment", bad, "-o", tmp_path / "x.h5ad"
    )
    assert msg == f"error: alignment file {bad}: {message}"


def test_no_transcript_passes_the_quality_threshold(xenium, tmp_path, capsys):
    path, slide, alignment, truth = xenium
    msg = cli_error(
        capsys,
        "read",
        "xenium",
        path,
        "--slide",
        slide,
        "--alignment",
        alignment,
        "--min-qv",
        50,
        "-o",
        tmp_path / "x.h5ad",
    )
    t = truth.transcripts
    assert msg == (
        f"error: {path / 'transcripts.parquet'}: no transcripts left with qv >= 50 ({len(t)} read, "
        f"{int(t['is_gene'].sum())} below qv, {int((~t['is_gene']).sum())} control probes or codewords)"
    )
    with pytest.raises(
        InputError, match=r"spot_um: the pseudo-spot side must be a positive number of microns, got 0"
    ):
        XeniumReader(path, slide=slide, spot_um=0)
