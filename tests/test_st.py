"""Spatial transcriptomics readers, the AnnData contract, spot-patch pairing and the training dataset."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histokg.errors import InputError
from histokg.pp import log1p_cp10k, panel_log1p
from histokg.st import read_hest, read_legacy_st, read_visium, validate
from histokg.st.contract import concat_sections, write_h5ad
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig, pair_spots, spots_overlay
from histokg.st.transforms import AugmentConfig, build_transforms, hed_jitter
from histokg.wsi import convert, open_slide


def _section(study, lib="S1"):
    return study / "sections" / lib, study / "slides" / f"{lib}.tiff"


def test_read_visium_contract(synth_study):
    sr, slide = _section(synth_study)
    adata = read_visium(sr, slide=slide, library_id="S1")
    validate(adata)
    assert adata.obs_names[0].startswith("S1_") and adata.obs["barcode"].iloc[0].endswith("-1")
    assert adata.obs["library_id"].dtype.name == "category"
    assert adata.uns["spatial"]["S1"]["metadata"]["mpp"] == 0.5
    assert adata.uns["spatial"]["S1"]["metadata"]["source_image_path"] == str(slide.resolve())
    assert adata.uns["spatial"]["S1"]["images"]["hires"].dtype == np.uint8
    assert adata.layers["counts"].dtype.kind == "i"
    # obsm spatial column 0 is x = pxl_col_in_fullres
    pos = pd.read_csv(sr / "spatial" / "tissue_positions.csv").set_index("barcode")
    b = adata.obs["barcode"].iloc[5]
    assert tuple(adata.obsm["spatial"][5]) == (
        pos.loc[b, "pxl_col_in_fullres"],
        pos.loc[b, "pxl_row_in_fullres"],
    )
    # Without the slide, the MPP comes from the 55 um spot diameter.
    no_slide = read_visium(sr, library_id="S1")
    assert no_slide.uns["spatial"]["S1"]["metadata"]["mpp"] == pytest.approx(0.5)


def test_positions_v1_and_parquet_read_the_same(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    ref = read_visium(sr, slide=slide, library_id="S1")
    pos = pd.read_csv(sr / "spatial" / "tissue_positions.csv")
    for variant in ("v1", "v3"):
        copy = tmp_path / variant
        shutil.copytree(sr, copy)
        (copy / "spatial" / "tissue_positions.csv").unlink()
        if variant == "v1":
            pos.to_csv(copy / "spatial" / "tissue_positions_list.csv", header=False, index=False)
        else:
            pos.to_parquet(copy / "spatial" / "tissue_positions.parquet")
        other = read_visium(copy, slide=slide, library_id="S1")
        np.testing.assert_array_equal(other.obsm["spatial"], ref.obsm["spatial"])
        assert (other.obs_names == ref.obs_names).all()


def test_mismatched_barcodes_are_reported(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    copy = tmp_path / "bad"
    shutil.copytree(sr, copy)
    pos = pd.read_csv(copy / "spatial" / "tissue_positions.csv")
    pos["barcode"] = pos["barcode"].str.replace("-1", "-2")
    pos.to_csv(copy / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(InputError) as err:
        read_visium(copy, slide=slide)
    msg = str(err.value)
    assert "do not match" in msg and "0 of" in msg and "only in counts: ['" in msg and "-2'" in msg


def test_duplicate_and_outside_spots(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    dup = tmp_path / "dup"
    shutil.copytree(sr, dup)
    pos = pd.read_csv(dup / "spatial" / "tissue_positions.csv")
    pd.concat([pos, pos.iloc[:1]]).to_csv(dup / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(InputError, match="duplicate barcodes"):
        read_visium(dup, slide=slide)
    out = tmp_path / "out"
    shutil.copytree(sr, out)
    pos["pxl_col_in_fullres"] += 100_000
    pos.to_csv(out / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(InputError, match="outside the .* image"):
        read_visium(out, slide=slide)


def test_malformed_scalefactors(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    copy = tmp_path / "sf"
    shutil.copytree(sr, copy)
    (copy / "spatial" / "scalefactors_json.json").write_text("{ not json")
    with pytest.raises(InputError, match=r"scalefactors_json\.json:1: invalid JSON"):
        read_visium(copy, slide=slide)


def test_h5ad_round_trip_and_spatial_scatter(synth_adata, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import squidpy as sq

    path = write_h5ad(synth_adata, tmp_path / "study.h5ad")
    back = ad.read_h5ad(path)
    validate(back)
    np.testing.assert_array_equal(back.obsm["spatial"], synth_adata.obsm["spatial"])
    one = back[back.obs["library_id"] == "S2"].copy()
    sq.pl.spatial_scatter(one, color="region", library_id="S2", img_res_key="hires", save=None)
    fig = matplotlib.pyplot.gcf()
    fig.savefig(tmp_path / "scatter.png", dpi=60)
    img = np.asarray(Image.open(tmp_path / "scatter.png").convert("RGB"))
    assert img.shape[0] > 100 and img.std() > 10  # something was drawn


def test_concat_requires_distinct_library_ids(synth_study):
    sr, slide = _section(synth_study)
    a = read_visium(sr, slide=slide, library_id="S1")
    with pytest.raises(InputError, match="share a library_id"):
        concat_sections([a, a])


def test_concat_keeps_the_slides_of_a_part_holding_several(synth_adata):
    lib = synth_adata.obs["library_id"].astype(str)
    first_two = synth_adata[lib.isin(["S1", "S2"]).to_numpy()].copy()  # one part, two slides
    third = synth_adata[(lib == "S3").to_numpy()].copy()
    out = concat_sections([first_two, third])
    assert out.obs["library_id"].astype(str).value_counts().to_dict() == lib.value_counts().to_dict()
    assert list(out.obs["library_id"].cat.categories) == ["S1", "S2", "S3"]
    with pytest.raises(InputError, match="share a library_id"):
        concat_sections([first_two, first_two[first_two.obs["library_id"] == "S2"].copy()])


def test_pairing_flags_and_patch_centres(synth_adata):
    adata = synth_adata.copy()
    pair_spots(adata, PairingConfig(patch_um=112, patch_px=224))
    assert adata.uns["histokg"]["pairing"]["target_mpp"] == 0.5
    partial = adata.obs["patch_partial"].to_numpy()
    xy = adata.obsm["spatial"]
    lib = adata.obs["library_id"].astype(str).to_numpy()
    # With a 40 um edge margin and 112 um patches, the spots of the first row cross the edge.
    first_row = xy[:, 1] == xy[lib == "S1", 1].min()
    assert (
        partial[first_row & (lib == "S1")].all()
        or not (first_row & (lib == "S1") & adata.obs["in_tissue"].to_numpy()).any()
    )
    assert not partial[(xy[:, 0] > 300) & (xy[:, 1] > 300) & (xy[:, 0] < 2500) & (xy[:, 1] < 2000)].any()
    ds = SpotPatchDataset(adata)
    with open_slide(adata.uns["spatial"]["S2"]["metadata"]["source_image_path"]) as slide:
        for i in np.flatnonzero(lib == "S2")[:5]:
            patch = ds.read_image(i)
            x, y = np.round(xy[i]).astype(int)
            src = slide.read_region((x - 2, y - 2), 0, (4, 4)).astype(float).mean((0, 1))
            np.testing.assert_allclose(patch[110:114, 110:114].astype(float).mean((0, 1)), src, atol=6)


def test_dataset_items_and_transforms(synth_adata):
    genes = list(synth_adata.var_names[:50])
    ds = SpotPatchDataset(synth_adata, genes=genes, transform=build_transforms(AugmentConfig(prob=1.0)))
    item = ds[3]
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert item["expr"].shape == (50,) and item["slide_id"] in {"S1", "S2", "S3"}
    assert item["spot_id"] == synth_adata.obs_names[3]
    expected = log1p_cp10k(synth_adata.layers["counts"][3], dense=True)[0, :50]
    np.testing.assert_allclose(item["expr"].numpy(), expected, rtol=1e-5)
    with pytest.raises(InputError, match="lacks 2 of the 3 panel genes"):
        panel_log1p(synth_adata, [genes[0], "NOT_A_GENE", "NOT_B_GENE"])


def test_hed_jitter_identity_and_effect():
    img = torch.rand(3, 16, 16) * 0.8 + 0.1
    same = hed_jitter(img, np.ones(3), np.zeros(3))
    torch.testing.assert_close(same, img, atol=1e-4, rtol=1e-4)
    darker = hed_jitter(img, np.array([1.5, 1.0, 1.0]), np.zeros(3))
    assert float(darker.mean()) < float(img.mean())


def test_dataloader_workers_match_main_process(synth_adata):
    ds = SpotPatchDataset(synth_adata)
    subset = torch.utils.data.Subset(ds, list(range(8)))
    single = [b["image"] for b in torch.utils.data.DataLoader(subset, batch_size=4, num_workers=0)]
    multi = [b["image"] for b in torch.utils.data.DataLoader(subset, batch_size=4, num_workers=2)]
    for a, b in zip(single, multi, strict=True):
        torch.testing.assert_close(a, b)


def test_hest_pair(synth_study, tmp_path):
    sr, slide = _section(synth_study, "S3")
    src = read_visium(sr, slide=slide, library_id="S3")
    hest = ad.AnnData(
        X=src.layers["counts"],
        obs=pd.DataFrame(index=src.obs["barcode"].to_numpy()),
        var=pd.DataFrame(index=src.var_names),
    )
    hest.obsm["spatial"] = src.obsm["spatial"]
    hest.write_h5ad(tmp_path / "TENX99.h5ad")
    adata = read_hest(tmp_path / "TENX99.h5ad", slide)
    validate(adata)
    assert (
        adata.obs["library_id"].iloc[0] == "TENX99"
        and adata.uns["spatial"]["TENX99"]["metadata"]["mpp"] == 0.5
    )
    np.testing.assert_array_equal(adata.obsm["spatial"], src.obsm["spatial"])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"pixel_size_um_estimated": 0.5}))
    png = tmp_path / "plain.png"
    with open_slide(slide) as s:
        Image.fromarray(s.read_region((0, 0), 0, s.dimensions)).save(png)
    assert (
        read_hest(tmp_path / "TENX99.h5ad", png, metadata_json=meta).uns["spatial"]["TENX99"]["metadata"][
            "mpp"
        ]
        == 0.5
    )


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def her2st_sections(her2st):
    out = {}
    for sec in ("C2", "C3", "C4", "C5"):
        out[sec] = read_legacy_st(
            her2st / "counts" / f"{sec}.tsv.gz",
            her2st / "spots" / f"{sec}_selection.tsv",
            her2st / "images" / f"{sec}_HE.jpg",
            library_id=sec,
        )
    return out


def test_her2st_sections_read(her2st_sections):
    sizes = {k: v.n_obs for k, v in her2st_sections.items()}
    assert sizes == {"C2": 187, "C3": 180, "C4": 184, "C5": 181}
    for sec, adata in her2st_sections.items():
        validate(adata)
        mpp = adata.uns["spatial"][sec]["metadata"]["mpp"]
        assert 0.70 < mpp < 0.77, mpp  # 200 um pitch over ~272 px
        assert adata.n_vars > 15000 and "ERBB2" in adata.var_names
    combined = concat_sections(list(her2st_sections.values()))
    assert combined.n_obs == sum(sizes.values()) and combined.obs["library_id"].nunique() == 4


def test_her2st_pyramid_pairing_lands_on_spots(her2st, her2st_sections, tmp_path):
    adata = her2st_sections["C2"].copy()
    mpp = adata.uns["spatial"]["C2"]["metadata"]["mpp"]
    jpg = her2st / "images" / "C2_HE.jpg"
    pyramid = convert(jpg, tmp_path / "C2.tiff", mpp=mpp)
    with open_slide(pyramid) as slide:
        assert slide.level_count >= 4 and slide.mpp == pytest.approx(mpp)
    adata.uns["spatial"]["C2"]["metadata"]["source_image_path"] = str(pyramid)
    cfg = PairingConfig(patch_um=112, patch_px=224)
    pair_spots(adata, cfg)
    assert adata.obs["on_tissue_mask"].to_numpy(bool).mean() > 0.9
    ds = SpotPatchDataset(adata, cfg)
    source = np.asarray(Image.open(jpg).convert("RGB")).astype(float)
    scale = cfg.target_mpp / mpp  # source px per patch px
    for i in range(0, adata.n_obs, 37):
        patch = ds.read_image(i).astype(float)
        x, y = adata.obsm["spatial"][i]
        # centre of the patch vs the source image at the spot centre, averaged over the same 6x6 um
        r = int(round(3 / mpp))
        ref = source[int(y) - r : int(y) + r, int(x) - r : int(x) + r].mean((0, 1))
        k = int(round(r / scale))
        got = patch[112 - k : 112 + k, 112 - k : 112 + k].mean((0, 1))
        np.testing.assert_allclose(got, ref, atol=10)
        # ... and it is not merely a uniform image: 40 um away the source looks different somewhere
    xs = adata.obsm["spatial"][:, 0]
    assert xs.min() > 0 and xs.max() < source.shape[1]


def test_mob_unmatched_rows_dropped_with_warning(shared_data, caplog):
    mob = shared_data / "mob"
    with caplog.at_level("WARNING"):
        adata = read_legacy_st(
            mob / "MOB1.tsv", mob / "alignment_table_MOB1.tsv", mob / "MOB1.jpg", library_id="MOB1"
        )
    assert adata.n_obs == 1923 and "11 of 1934 count rows have no spot" in caplog.text
    assert adata.obs["in_tissue"].to_numpy(bool).sum() > 300 and adata.var_names[0].startswith("ENSMUSG")
    mpp = adata.uns["spatial"]["MOB1"]["metadata"]["mpp"]
    assert 5.5 < mpp < 7.0, mpp  # the low-resolution MOB images are about 6.3 um/px


def test_legacy_mismatch_and_bad_counts(her2st, tmp_path):
    counts = pd.read_csv(her2st / "counts" / "C3.tsv.gz", sep="\t", index_col=0).iloc[:, :20]
    counts.index = [f"9{i}" for i in counts.index]  # ids that match no spot
    counts.to_csv(tmp_path / "shifted.tsv", sep="\t")
    with pytest.raises(InputError) as err:
        read_legacy_st(
            tmp_path / "shifted.tsv", her2st / "spots" / "C3_selection.tsv", her2st / "images" / "C3_HE.jpg"
        )
    msg = str(err.value)
    assert (
        "0 of 180 count rows have a spot" in msg
        and "only in counts: ['9" in msg
        and "only in the table: ['" in msg
    )
    (tmp_path / "text.tsv").write_text("\tA\tB\n1x1\tfoo\t2\n")
    with pytest.raises(InputError, match=r"text\.tsv: non-numeric"):
        read_legacy_st(
            tmp_path / "text.tsv", her2st / "spots" / "C3_selection.tsv", her2st / "images" / "C3_HE.jpg"
        )


def test_spots_overlay_png(synth_adata, tmp_path):
    adata = synth_adata.copy()
    pair_spots(adata)
    img = spots_overlay(adata, "S1", max_side=600)
    assert img.shape[2] == 3 and max(img.shape[:2]) == 600
    # Spot outlines are drawn in the overlay colours.
    green = (img[..., 1] > 150) & (img[..., 0] < 60) & (img[..., 2] < 100)
    assert green.sum() > 100


def test_mtx_matrix_folder_reads_like_h5(synth_study, tmp_path):
    import gzip

    import scipy.io

    sr, slide = _section(synth_study)
    ref = read_visium(sr, slide=slide, library_id="S1")
    copy = tmp_path / "mtx"
    shutil.copytree(sr, copy)
    (copy / "filtered_feature_bc_matrix.h5").unlink()
    folder = copy / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, ref.layers["counts"].T.tocoo())  # genes x barcodes, as Space Ranger writes it
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(ref.obs["barcode"]) + "\n")
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.write(
            "".join(
                f"{i}\t{g}\tGene Expression\n"
                for i, g in zip(ref.var["gene_ids"], ref.var_names, strict=True)
            )
        )
    other = read_visium(copy, slide=slide, library_id="S1")
    assert (other.obs_names == ref.obs_names).all() and (other.var_names == ref.var_names).all()
    assert (other.layers["counts"] != ref.layers["counts"]).nnz == 0
