"""The synthetic study: real pyramids, Space Ranger layout, planted biology, stain shift, determinism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import openslide
import pandas as pd
import tifffile

from histokg.synth import REGION_NAMES, SynthConfig, generate_study
from histokg.synth.expression import cell_type_markers


def test_layout_and_pyramids(synth_study):
    manifest = json.loads((synth_study / "study.json").read_text())
    assert len(manifest["sections"]) == 3
    for sec in manifest["sections"]:
        slide = openslide.OpenSlide(str(synth_study / sec["slide"]))
        assert slide.level_count >= 3
        assert float(slide.properties["openslide.mpp-x"]) == 0.5
        with tifffile.TiffFile(synth_study / sec["slide"]) as tif:
            assert all(page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG for page in tif.pages)
        sr = synth_study / sec["spaceranger"]
        for name in (
            "filtered_feature_bc_matrix.h5",
            "spatial/tissue_positions.csv",
            "spatial/scalefactors_json.json",
            "spatial/tissue_hires_image.png",
            "spatial/tissue_lowres_image.png",
            "truth.csv",
        ):
            assert (sr / name).is_file(), name
        positions = pd.read_csv(sr / "spatial" / "tissue_positions.csv")
        assert list(positions.columns) == [
            "barcode",
            "in_tissue",
            "array_row",
            "array_col",
            "pxl_row_in_fullres",
            "pxl_col_in_fullres",
        ]
        # Visium geometry: 100 um pitch, so nearest neighbours are 200 px apart at 0.5 um/px.
        from scipy.spatial import cKDTree

        xy = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
        d, _ = cKDTree(xy).query(xy, k=2)
        assert abs(np.median(d[:, 1]) - 200) <= 1


def _region_means(adata, genes):
    expr = adata.layers["counts"].toarray()
    expr = np.log1p(expr / expr.sum(1, keepdims=True) * 1e4)
    idx = [list(adata.var_names).index(g) for g in genes]
    df = pd.DataFrame(expr[:, idx].mean(1), index=adata.obs_names, columns=["score"])
    df["region"] = adata.obs["region"].to_numpy()
    return df.groupby("region", observed=True)["score"].mean()


def test_planted_markers_follow_regions(synth_adata):
    markers = cell_type_markers()
    adipose = _region_means(synth_adata, markers["adipocyte"])
    assert adipose.idxmax() == "adipose tissue"
    immune = _region_means(synth_adata, markers["T cell"] + markers["B cell"])
    assert immune.idxmax() == "immune infiltrate"
    fibro = _region_means(synth_adata, markers["fibroblast"])
    assert fibro["stroma"] > fibro["invasive carcinoma"]


def test_appearance_depends_on_region(synth_adata):
    """Immune infiltrate is darker (dense nuclei) than stroma in every section, stain shift notwithstanding."""
    from histokg.st.dataset import SpotPatchDataset

    ds = SpotPatchDataset(synth_adata)
    regions = synth_adata.obs["region"].astype(str).to_numpy()
    libs = synth_adata.obs["library_id"].astype(str).to_numpy()
    frac = synth_adata.obsm["truth"]
    for lib in np.unique(libs):
        darkness = {}
        for reg in ("immune infiltrate", "stroma"):
            idx = np.flatnonzero((libs == lib) & (regions == reg) & (frac[f"frac:{reg}"].to_numpy() > 0.8))[
                :6
            ]
            if len(idx):
                darkness[reg] = np.mean([255 - ds.read_image(i).mean() for i in idx])
        if len(darkness) == 2:
            assert darkness["immune infiltrate"] > darkness["stroma"], (lib, darkness)


def test_stain_shift_differs_between_sections(synth_study):
    manifest = json.loads((synth_study / "study.json").read_text())
    shifts = [s["stain_shift"] for s in manifest["sections"]]
    assert len({round(s["h_scale"], 4) for s in shifts}) == 3
    zero = SynthConfig(stain_shift=0.0)
    from histokg.synth.render import StainShift

    flat = StainShift.draw(np.random.default_rng(0), zero.stain_shift)
    assert flat.h_scale == 1.0 and flat.blur_px == 0.0


def test_truth_covers_regions(synth_adata):
    assert set(synth_adata.obs["region"].astype(str)) <= set(REGION_NAMES)
    assert synth_adata.obs["region"].nunique() >= 4
    cols = synth_adata.obsm["truth"].columns
    assert any(c.startswith("pathway:HALLMARK_") for c in cols) and any(
        c.startswith("celltype:") for c in cols
    )


def test_deterministic_for_seed(tmp_path):
    cfg = SynthConfig(seed=3, n_sections=1, width_um=700.0, height_um=600.0)
    digests = []
    for run in ("a", "b"):
        generate_study(tmp_path / run, cfg)
        files = [
            "sections/S1/filtered_feature_bc_matrix.h5",
            "sections/S1/truth.csv",
            "sections/S1/spatial/tissue_positions.csv",
        ]
        import h5py

        with h5py.File(tmp_path / run / files[0]) as f:
            counts = f["matrix/data"][:].tobytes() + f["matrix/indices"][:].tobytes()
        digests.append(
            hashlib.sha256(
                counts + b"".join((tmp_path / run / p).read_bytes() for p in files[1:])
            ).hexdigest()
        )
        slide = openslide.OpenSlide(str(tmp_path / run / "slides" / "S1.tiff"))
        digests.append(hashlib.sha256(slide.read_region((0, 0), 0, slide.dimensions).tobytes()).hexdigest())
    assert digests[0] == digests[2] and digests[1] == digests[3]


def test_parallel_sections_match_sequential(tmp_path):
    base = dict(seed=5, n_sections=2, width_um=600.0, height_um=500.0)
    for workers in (1, 2):
        generate_study(tmp_path / f"w{workers}", SynthConfig(**base, workers=workers))
    for lib in ("S1", "S2"):
        a = (tmp_path / "w1" / "sections" / lib / "truth.csv").read_bytes()
        assert a == (tmp_path / "w2" / "sections" / lib / "truth.csv").read_bytes()
        sa = openslide.OpenSlide(str(tmp_path / "w1" / "slides" / f"{lib}.tiff"))
        sb = openslide.OpenSlide(str(tmp_path / "w2" / "slides" / f"{lib}.tiff"))
        assert (
            sa.read_region((0, 0), 0, sa.dimensions).tobytes()
            == sb.read_region((0, 0), 0, sb.dimensions).tobytes()
        )
