"""Visium HD: bins of each size from Space Ranger's binned outputs, and one-line errors for bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from readers_fixtures import HD_GENES, write_visium_hd

from histokg.cli import main
from histokg.errors import InputError
from histokg.st import read
from histokg.st.readers.visium_hd import VisiumHDReader
from histokg.wsi import open_slide


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
def hd(tmp_path_factory, synth_study) -> tuple[Path, Path, object]:
    outs = tmp_path_factory.mktemp("hd") / "sample" / "outs"
    truth = write_visium_hd(outs, mpp=0.5)
    return outs, synth_study / "slides" / "S1.tiff", truth


def test_every_bin_size_holds_the_same_counts_on_its_grid(hd):
    outs, slide, truth = hd
    totals = truth.counts_2um.sum(axis=(0, 1))
    for b in (2, 8, 16):
        adata = read("visium-hd", outs, slide=slide, bin_um=b)
        entry = adata.uns["spatial"]["sample"]
        f = b // 2
        n_tissue = int(truth.tissue_2um.reshape(96 // f, f, 112 // f, f).any(axis=(1, 3)).sum())
        assert adata.n_obs == n_tissue and list(adata.var_names) == HD_GENES
        np.testing.assert_array_equal(np.asarray(adata.layers["counts"].sum(axis=0)).ravel(), totals)
        assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(b / 0.5)
        assert entry["metadata"]["bin_size_um"] == b and entry["metadata"]["mpp"] == 0.5
        assert entry["metadata"]["mpp_source"].endswith(
            f"square_{b:03d}um/spatial/scalefactors_json.json microns_per_pixel"
        )
        # bin (row, col) sits at the origin plus (col + 0.5, row + 0.5) bins, in slide pixels
        rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
        expected = np.column_stack([500 + (cols + 0.5) * b / 0.5, 400 + (rows + 0.5) * b / 0.5])
        np.testing.assert_allclose(adata.obsm["spatial"], expected)
        # HDG00 marks the left half of the tissue, on every grid
        left = adata.obsm["spatial"][:, 0] < 500 + 56 * 2 / 0.5  # the grid is 112 bins of 2 um wide
        hdg = np.asarray(adata[:, "HDG00"].layers["counts"].todense()).ravel()
        assert hdg[left].mean() > 3 * hdg[~left].mean()
    assert VisiumHDReader(outs, slide=slide).bin_um == 8  # the default bin


def test_a_plain_image_slide_takes_microns_per_pixel(hd, tmp_path):
    outs, slide, _ = hd
    png = tmp_path / "fullres.png"
    with open_slide(slide) as s:
        Image.fromarray(s.read_region((0, 0), 0, s.dimensions)).save(png)
    adata = read("visium-hd", outs, slide=png, bin_um=16)
    meta = adata.uns["spatial"]["sample"]["metadata"]
    assert meta["mpp"] == 0.5 and "microns_per_pixel" in meta["mpp_source"]
    assert meta["source_image_path"] == str(png.resolve())


def test_missing_bin_names_the_bins_there(hd, tmp_path, capsys):
    outs, slide, _ = hd
    copy = tmp_path / "outs"
    shutil.copytree(outs, copy)
    shutil.rmtree(copy / "binned_outputs" / "square_002um")
    with pytest.raises(InputError) as err:
        VisiumHDReader(copy, slide=slide, bin_um=2)
    assert (
        str(err.value)
        == f"{copy / 'binned_outputs'}: no square_002um folder for bin 2 um; the bins here are 8, 16 um"
    )
    msg = cli_error(
        capsys, "read", "visium-hd", copy, "--slide", slide, "--bin", 4, "-o", tmp_path / "x.h5ad"
    )
    assert msg.endswith("binned_outputs: no square_004um folder for bin 4 um; the bins here are 8, 16 um")
    msg = cli_error(capsys, "read", "visium-hd", tmp_path, "--slide", slide, "-o", tmp_path / "x.h5ad")
    assert msg == (
        f"error: {tmp_path}: no binned_outputs/ folder; expected a Space Ranger Visium HD outs folder "
        "(binned_outputs/square_002um, square_008um, square_016um)"
    )


def _edit_scalefactors(outs: Path, bin_um: int, **changes) -> None:
    file = outs / "binned_outputs" / f"square_{bin_um:03d}um" / "spatial" / "scalefactors_json.json"
    scalefactors = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            scalefactors.pop(key)
        else:
            scalefactors[key] = value
    file.write_text(json.dumps(scalefactors))


def test_scalefactors_without_microns_per_pixel_or_with_another_bin_size(hd, tmp_path, capsys):
    outs, slide, _ = hd
    copy = tmp_path / "outs"
    shutil.copytree(outs, copy)
    sf = copy / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    _edit_scalefactors(copy, 8, microns_per_pixel=None)
    msg = cli_error(capsys, "read", "visium-hd", copy, "--slide", slide, "-o", tmp_path / "x.h5ad")
    assert (
        msg
        == f"error: {sf}: field 'microns_per_pixel' is missing (Space Ranger writes it for Visium HD bins)"
    )
    _edit_scalefactors(copy, 8, microns_per_pixel=0)
    with pytest.raises(InputError, match=r"microns_per_pixel must be a positive number below 100, got 0$"):
        VisiumHDReader(copy, slide=slide).read()
    _edit_scalefactors(copy, 8, microns_per_pixel=0.5, bin_size_um=16)
    with pytest.raises(InputError) as err:
        VisiumHDReader(copy, slide=slide).read()
    assert str(err.value) == f"{sf}: bin_size_um is 16 but the folder is square_008um"


def test_slide_whose_mpp_disagrees_with_microns_per_pixel(hd, tmp_path, capsys):
    outs, slide, _ = hd
    copy = tmp_path / "outs"
    shutil.copytree(outs, copy)
    _edit_scalefactors(copy, 16, microns_per_pixel=0.25)
    sf = copy / "binned_outputs" / "square_016um" / "spatial" / "scalefactors_json.json"
    msg = cli_error(
        capsys, "read", "visium-hd", copy, "--slide", slide, "--bin", 16, "-o", tmp_path / "x.h5ad"
    )
    assert msg == (
        f"error: {sf} microns_per_pixel: 0.25 um/px, but slide {slide} records 0.5 um/px in its own metadata "
        "(more than 10% apart); is it the image the data were registered to (the full-resolution image given "
        "to Space Ranger)? Pass --mpp to override"
    )
    # --mpp overrides (the positions still fit the slide)
    adata = VisiumHDReader(copy, slide=slide, bin_um=16, mpp=0.5, library_id="HD1").read()
    assert adata.uns["spatial"]["HD1"]["metadata"]["mpp_source"] == "given"


def test_positions_table_lacking_a_column(hd, tmp_path, capsys):
    outs, slide, _ = hd
    copy = tmp_path / "outs"
    shutil.copytree(outs, copy)
    file = copy / "binned_outputs" / "square_008um" / "spatial" / "tissue_positions.parquet"
    pd.read_parquet(file).drop(columns=["pxl_row_in_fullres"]).to_parquet(file)
    msg = cli_error(capsys, "read", "visium-hd", copy, "--slide", slide, "-o", tmp_path / "x.h5ad")
    assert msg.startswith(
        f"error: {file}: missing columns ['pxl_row_in_fullres']; found ['barcode', 'in_tissue'"
    )
