"""Bad spot values: non-finite or collapsed coordinates, no spots, spots off the tissue, impossible spot
sizes and count matrices without counts. Each is one error naming the file or obs and the first bad
spots (or, where the data can still be used, a warning saying exactly what was done), never a
traceback and never a silently wrong result; the checks live once in the AnnData contract
(:func:`histokg.st.contract.check_spots`, ``check_counts``) and are called by every consumer."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from bad_values_fixtures import one_line_error, tiny_model

from histokg.errors import InputError
from histokg.st import read_legacy_st
from histokg.st.contract import write_h5ad
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig, pair_spots, spots_overlay
from histokg.tl import embed


def _copy(section: dict, tmp_path) -> dict:
    out = {}
    for key, path in section.items():
        out[key] = tmp_path / path.name
        shutil.copy(path, out[key])
    return out


def _edit_spots(files: dict, edit) -> None:
    table = pd.read_csv(files["spots"], sep="\t")
    edit(table)
    table.to_csv(files["spots"], sep="\t", index=False)


# --------------------------------------------------------------------------- coordinates


def test_nan_in_the_spot_table_names_the_rows(legacy_section, tmp_path, capsys):
    """Before: a cKDTree traceback ("data must be finite") from the pitch measurement."""
    files = _copy(legacy_section, tmp_path)
    _edit_spots(files, lambda t: t.__setitem__("pixel_x", t["pixel_x"].where(t.index != 3)))
    line = one_line_error(
        capsys, "read", "legacy", files["counts"], files["spots"], files["image"], "-o", tmp_path / "x.h5ad"
    )
    assert "spots.tsv: 1 of 36 rows have empty, NaN or infinite" in line and "line 5" in line
    assert not (tmp_path / "x.h5ad").exists()


def test_spots_all_at_one_point_are_an_error_not_a_division_by_zero(
    legacy_section, legacy_adata, tmp_path, capsys
):
    """Before: ZeroDivisionError deriving the MPP from a spot pitch of 0 px."""
    files = _copy(legacy_section, tmp_path)
    _edit_spots(files, lambda t: t.__setitem__("pixel_x", 100.0) or t.__setitem__("pixel_y", 100.0))
    line = one_line_error(
        capsys, "read", "legacy", files["counts"], files["spots"], files["image"], "-o", tmp_path / "x.h5ad"
    )
    assert "36 of 36 spots share their position with another spot" in line and "cannot be measured" in line
    adata = legacy_adata.copy()
    adata.obsm["spatial"] = np.tile([100.0, 100.0], (adata.n_obs, 1))
    with pytest.raises(InputError, match=r"all 36 spots of library 'counts' lie at one point"):
        pair_spots(adata)


def _h5ad(adata, tmp_path, name: str):
    return write_h5ad(adata, tmp_path / f"{name}.h5ad")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "nan",
            "obsm['spatial']: 1 of 36 spot centres are not finite numbers (NaN or infinite), e.g. 'counts_1x3'",
        ),
        ("inf", "obsm['spatial']: 1 of 36 spot centres are not finite numbers"),
        ("missing", "obsm['spatial'] is missing"),
        ("zero", "no spots (0 observations)"),
    ],
)
def test_pair_refuses_bad_spot_centres_and_no_spots(legacy_adata, tmp_path, capsys, case, expected):
    """Before: exit 0 with the NaN spot flagged as a full patch; a KeyError; exit 0 for zero spots."""
    adata = legacy_adata.copy()
    if case == "nan":
        adata.obsm["spatial"][2, 0] = np.nan
    elif case == "inf":
        adata.obsm["spatial"][5, 1] = np.inf
    elif case == "missing":
        del adata.obsm["spatial"]
    else:
        adata = adata[:0].copy()
    path = _h5ad(adata, tmp_path, case)
    line = one_line_error(capsys, "pair", path, "-o", tmp_path / "p.h5ad")
    assert line.startswith(f"error: h5ad file {path}: ") and expected in line, line
    assert not (tmp_path / "p.h5ad").exists()
    with pytest.raises(InputError, match="the AnnData given to pair_spots"):
        pair_spots(adata)


def test_embed_refuses_nan_spot_centres(legacy_adata):
    """Before: ValueError "cannot convert float NaN to integer" reading the patch."""
    adata = legacy_adata.copy()
    adata.obsm["spatial"][7] = np.nan
    model = tiny_model(list(adata.var_names))
    with pytest.raises(InputError, match=r"tl.embed: obsm\['spatial'\]: 1 of 36 spot centres.*'counts_2x2'"):
        embed(adata, model, device="cpu")
    with pytest.raises(InputError, match="SpotPatchDataset"):
        SpotPatchDataset(adata, PairingConfig(patch_um=112, patch_px=32))


# --------------------------------------------------------------------------- spot size


@pytest.mark.parametrize(
    ("diameter", "expected"),
    [
        (0.0, "the spot diameter must be a positive number of pixels, got 0.0"),
        (-5.0, "the spot diameter must be a positive number of pixels, got -5.0"),
        (float("nan"), "the spot diameter must be a positive number of pixels, got nan"),
        (
            1e7,
            "a spot diameter of 1e+07 px at 5 um/px is 5e+07 um, more than any spot or bin (at most 5000 um",
        ),
    ],
)
def test_impossible_spot_diameters_are_refused(legacy_adata, tmp_path, capsys, diameter, expected):
    """Before: accepted; ``pair --overlay-dir`` then drew 1e7 px circles for minutes."""
    adata = legacy_adata.copy()
    adata.uns["spatial"]["counts"]["scalefactors"]["spot_diameter_fullres"] = diameter
    path = _h5ad(adata, tmp_path, "diameter")
    line = one_line_error(
        capsys, "pair", path, "-o", tmp_path / "p.h5ad", "--overlay-dir", tmp_path / "overlays"
    )
    assert "uns['spatial']['counts']['scalefactors']['spot_diameter_fullres']" in line and expected in line
    assert not (tmp_path / "p.h5ad").exists() and not (tmp_path / "overlays").exists()
    with pytest.raises(InputError, match="spots_overlay"):
        spots_overlay(adata, "counts")


def test_a_reader_refuses_an_impossible_spot_size(legacy_section):
    with pytest.raises(
        InputError, match=r"counts.tsv: spot size from legacy ST spot \(0 um\): the spot diameter"
    ):
        read_legacy_st(
            legacy_section["counts"], legacy_section["spots"], legacy_section["image"], spot_diameter_um=0
        )
    with pytest.raises(InputError, match=r"is 1e\+07 um, more than any spot or bin"):
        read_legacy_st(
            legacy_section["counts"], legacy_section["spots"], legacy_section["image"], spot_diameter_um=1e7
        )


# --------------------------------------------------------------------------- tissue


def test_no_spot_on_the_tissue_mask_is_an_error(legacy_adata, tmp_path, capsys):
    """Spots placed on bare glass (the slide of another section): before, exit 0 with every spot off."""
    adata = legacy_adata.copy()
    xy = (adata.obsm["spatial"] - 300) * 0.4
    adata.obsm["spatial"] = xy + [700.0, 5.0]  # the top right corner of the image, outside the tissue disk
    path = _h5ad(adata, tmp_path, "glass")
    line = one_line_error(capsys, "pair", path, "-o", tmp_path / "p.h5ad")
    assert "none of the 36 spots lies on the slide's tissue mask (e.g. spot 'counts_1x1' at x=700.0" in line
    assert not (tmp_path / "p.h5ad").exists()


def test_no_spot_marked_in_tissue_is_a_warning_at_read_and_pair(
    legacy_section, legacy_adata, tmp_path, caplog
):
    files = _copy(legacy_section, tmp_path)
    _edit_spots(files, lambda t: t.__setitem__("selected", 0))
    with caplog.at_level(logging.WARNING):
        adata = read_legacy_st(files["counts"], files["spots"], files["image"])
    assert "none of the 36 spots is marked as under tissue" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        paired = pair_spots(adata)
    assert "none of its 36 spots is marked as under tissue" in caplog.text
    assert paired.obs["on_tissue_mask"].to_numpy(bool).all()


def test_training_refuses_a_slide_with_no_spot_in_tissue(legacy_adata, tmp_path):
    from histokg.config import load_config
    from histokg.errors import ConfigError
    from histokg.train.config import TrainConfig
    from histokg.train.data import load_spots

    adata = legacy_adata.copy()
    adata.obs["in_tissue"] = pd.Categorical([False] * adata.n_obs, categories=[False, True])
    path = _h5ad(adata, tmp_path, "off")
    cfg = load_config(TrainConfig, None, [f"data.h5ad=[{path}]"])
    with pytest.raises(
        ConfigError, match=r"data.in_tissue_only: no spot of 'counts' is marked as under tissue"
    ):
        load_spots(cfg.data)


# --------------------------------------------------------------------------- counts


def test_an_all_zero_count_matrix_is_an_error_at_read_and_embed(
    legacy_section, legacy_adata, tmp_path, capsys
):
    """Before: every spot got one identical expression embedding, exit 0, no warning."""
    files = _copy(legacy_section, tmp_path)
    counts = pd.read_csv(files["counts"], sep="\t", index_col=0) * 0
    counts.to_csv(files["counts"], sep="\t")
    line = one_line_error(
        capsys, "read", "legacy", files["counts"], files["spots"], files["image"], "-o", tmp_path / "x.h5ad"
    )
    assert "counts.tsv: every count is zero (36 spots x 10 genes); a section without counts" in line
    adata = legacy_adata.copy()
    adata.layers["counts"] = adata.layers["counts"] * 0
    model = tiny_model(list(adata.var_names))
    with pytest.raises(
        InputError, match=r"none of the 36 spots has a count in the 10 panel genes.*--images-only"
    ):
        embed(adata, model, device="cpu")
    embed(adata, model, expression=False, device="cpu")  # the patches alone still embed
    assert "X_histokg" in adata.obsm and "X_histokg_expr" not in adata.obsm


def test_spots_without_counts_are_named_in_a_warning(legacy_section, legacy_adata, tmp_path, caplog):
    files = _copy(legacy_section, tmp_path)
    counts = pd.read_csv(files["counts"], sep="\t", index_col=0)
    counts.iloc[:2] = 0
    counts.to_csv(files["counts"], sep="\t")
    with caplog.at_level(logging.WARNING):
        read_legacy_st(files["counts"], files["spots"], files["image"])
    assert "2 of 36 spots have no counts at all (e.g. ['1x1', '1x2'])" in caplog.text
    adata = legacy_adata.copy()
    counts = adata.layers["counts"].toarray()
    counts[:3] = 0
    adata.layers["counts"] = counts
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        embed(adata, tiny_model(list(adata.var_names)), device="cpu")
    assert "3 of 36 spots have no count in the 10 panel genes (e.g. ['counts_1x1'" in caplog.text
    assert np.isfinite(adata.obsm["X_histokg_expr"]).all()


def test_check_spots_is_what_every_consumer_calls(legacy_adata):
    from histokg.st.contract import check_spots

    check_spots(legacy_adata)  # a valid section passes
    adata = legacy_adata.copy()
    adata.uns["spatial"]["counts"]["metadata"]["mpp"] = 1e-9
    with pytest.raises(
        InputError, match=r"\['metadata'\]\['mpp'\]: microns per pixel 1e-09 is not plausible"
    ):
        check_spots(adata, "x")


# --------------------------------------------------------------------------- found by tests/test_properties.py


def test_duplicate_spot_ids_are_refused_by_pair_and_embed(legacy_adata):
    """Before: pair_spots and tl.embed returned an AnnData with two spots of one id (the contract refuses
    such a file when it is read back)."""
    adata = legacy_adata.copy()
    names = list(adata.obs_names)
    names[-1] = names[0]
    adata.obs_names = names
    with pytest.raises(InputError, match=r"pair_spots: duplicate spot ids, e.g. \['counts_1x1'\]"):
        pair_spots(adata)
    with pytest.raises(InputError, match=r"tl.embed: duplicate spot ids, e.g. \['counts_1x1'\]"):
        embed(adata, tiny_model(list(adata.var_names)), device="cpu", copy=True)


@pytest.mark.parametrize(
    ("layer", "value", "expected"),
    [
        ("X", np.nan, r"X: 1 value\(s\) are NaN or infinite, e.g. nan for spot 'counts_1x2', gene 'G0'"),
        ("counts", np.inf, r"layers\['counts'\]: 1 value\(s\) are NaN or infinite, e.g. inf for spot"),
        ("counts", -3.0, r"layers\['counts'\]: 1 value\(s\) are negative \(raw counts are >= 0\), e.g. -3.0"),
    ],
)
def test_non_finite_or_negative_matrix_values_are_refused(legacy_adata, layer, value, expected):
    """Before: a NaN in X came out of pair_spots and tl.embed unchanged (a NaN in an output); NaN, infinite
    or negative raw counts came out of pair_spots unchanged, and tl.embed computed every embedding, then
    blamed the checkpoint ("1 of 36 embeddings are not finite; the checkpoint or its inputs are broken")."""
    adata = legacy_adata.copy()
    matrix = adata.X.toarray() if layer == "X" else adata.layers["counts"].toarray().astype(float)
    matrix[1, 0] = value
    if layer == "X":
        adata.X = matrix
    else:
        adata.layers["counts"] = matrix
    with pytest.raises(InputError, match=expected):
        pair_spots(adata)
    with pytest.raises(InputError, match=expected):
        embed(adata, tiny_model(list(adata.var_names)), device="cpu", copy=True)


def _hest_file(legacy_adata, tmp_path, *, xy=None, scalefactors=None):
    import anndata as ad

    hest = ad.AnnData(X=legacy_adata.layers["counts"], obs=legacy_adata.obs[[]].copy())
    hest.obsm["spatial"] = legacy_adata.obsm["spatial"] if xy is None else xy
    hest.uns["spatial"] = {"S": {"scalefactors": scalefactors or {"spot_diameter_fullres": 20.0}}}
    path = tmp_path / "S.h5ad"
    hest.write_h5ad(path)
    return path


def test_hest_values_that_are_not_numbers_are_one_line(legacy_section, legacy_adata, tmp_path, capsys):
    """Before: ValueError "could not convert string to float" from numpy, with a traceback."""
    from histokg.st import read_hest

    image = legacy_section["image"]
    xy = legacy_adata.obsm["spatial"].astype(str)
    xy[3, 0] = "abc"
    path = _hest_file(legacy_adata, tmp_path, xy=xy)
    with pytest.raises(InputError, match=r"S.h5ad: obsm\['spatial'\]: expected numbers \(could not convert"):
        read_hest(path, image, mpp=5.0)
    line = one_line_error(capsys, "read", "hest", path, image, "--mpp", "5", "-o", tmp_path / "x.h5ad")
    assert "obsm['spatial']: expected numbers" in line and not (tmp_path / "x.h5ad").exists()
    path = _hest_file(legacy_adata, tmp_path, scalefactors={"spot_diameter_fullres": "abc"})
    field = r"uns\['spatial'\]\['S'\]\['scalefactors'\]\['spot_diameter_fullres'\]"
    with pytest.raises(InputError, match=rf"h5ad file .*S.h5ad: {field}: expected a number, got 'abc'"):
        read_hest(path, image, mpp=5.0)
    path = _hest_file(legacy_adata, tmp_path)
    meta = tmp_path / "meta.json"
    meta.write_text('{"pixel_size_um_estimated": "abc"}')
    with pytest.raises(InputError, match=r"meta.json: pixel_size_um_estimated: expected a number, got 'abc'"):
        read_hest(path, image, metadata_json=meta)


def test_visium_scale_factors_that_are_not_finite_are_left_out(tmp_path, legacy_section, caplog):
    """Before: a NaN tissue_lowres_scalef was copied into uns['spatial'][...]['scalefactors'] (a NaN in
    the output)."""
    import json

    from PIL import Image

    from histokg.st import read_visium, write_10x_h5

    outs = tmp_path / "S1"
    (outs / "spatial").mkdir(parents=True)
    barcodes = [f"AAAC{i:04d}-1" for i in range(4)]
    write_10x_h5(
        outs / "filtered_feature_bc_matrix.h5", np.ones((4, 2), int), barcodes, ["A", "B"], ["A", "B"]
    )
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": [0, 0, 1, 1],
            "array_col": [0, 1, 0, 1],
            "pxl_row_in_fullres": [300.0, 300.0, 340.0, 340.0],
            "pxl_col_in_fullres": [300.0, 340.0, 300.0, 340.0],
        }
    ).to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    scalefactors = {"spot_diameter_fullres": 11.0, "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": "NaN"}
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors).replace('"NaN"', "NaN"))
    Image.open(legacy_section["image"]).resize((80, 80)).save(outs / "spatial" / "tissue_hires_image.png")
    with caplog.at_level(logging.WARNING):
        adata = read_visium(outs, library_id="S1")
    kept = adata.uns["spatial"]["S1"]["scalefactors"]
    assert "tissue_lowres_scalef" not in kept and all(np.isfinite(float(v)) for v in kept.values())
    assert "['tissue_lowres_scalef'] not finite" in caplog.text
