"""Bad and awkward inputs on the main path: each gives a clear result or a clear one-line error.

Decompression bombs, unreadable .h5ad files and study folders, repeated gene names, fractional
counts, malformed Space Ranger position tables, slides that moved, Space Ranger attributes for
scanpy/squidpy, boolean flags that squidpy can colour, and progress on long slide operations.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histokg.errors import InputError, SlideError
from histokg.st import read_legacy_st, read_visium, write_10x_h5
from histokg.st.contract import read_h5ad, write_h5ad
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig, pair_spots, slide_paths
from histokg.st.study import load_study
from histokg.wsi import open_slide
from histokg.wsi.memory import available_memory, check_image_memory

ADDRESS_SPACE_LIMIT = 8 * 2**30  # the CLI imports fit; a 17 GB allocation would fail, not swap


def _section(study: Path, lib: str = "S1") -> tuple[Path, Path]:
    return study / "sections" / lib, study / "slides" / f"{lib}.tiff"


def histokg_cli(*args, cwd: Path | None = None, limit_memory: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m histokg.cli`` as a user would; optionally under an address-space limit."""

    def limit() -> None:  # pragma: no cover - runs in the child
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "histokg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        preexec_fn=limit if limit_memory else None,
        timeout=300,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, one line on stderr starting with ``error:``, no traceback, every fragment present."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- decompression bombs


def bomb_jpeg(path: Path, width: int = 65000, height: int = 65000) -> Path:
    """A valid 64x64 JPEG whose SOF0 header claims ``width`` x ``height`` pixels (under 1 KB)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 160)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A small PNG whose IHDR claims ``width`` x ``height`` pixels (CRC fixed so PIL accepts the header)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    struct.pack_into(">II", data, ihdr + 4, width, height)
    struct.pack_into(">I", data, ihdr + 17, zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def test_bomb_jpeg_is_refused_before_decoding_by_tile_and_read_legacy(her2st, tmp_path):
    bomb = bomb_jpeg(tmp_path / "bomb.jpg")
    assert bomb.stat().st_size < 2000
    start = time.perf_counter()
    proc = histokg_cli("tile", bomb, tmp_path / "tiles", "--mpp", "0.5", limit_memory=True)
    assert_user_error(
        proc, "slide ", "bomb.jpg", "claims 65000x65000 px", "needs about 12.7 GB", "is available ("
    )
    proc = histokg_cli(
        "read",
        "legacy",
        her2st / "counts" / "C5.tsv.gz",
        her2st / "spots" / "C5_selection.tsv",
        bomb,
        "-o",
        tmp_path / "c5.h5ad",
        limit_memory=True,
    )
    assert_user_error(proc, "bomb.jpg", "claims 65000x65000 px", "decompression bomb")
    assert time.perf_counter() - start < 120  # refused from the header: nothing decoded
    assert not (tmp_path / "c5.h5ad").exists() and not (tmp_path / "tiles" / "bomb.h5").exists()


def test_memory_check_bounds_by_what_is_available(tmp_path, monkeypatch):
    available, source = available_memory()
    assert available > 0 and source
    import histokg.wsi.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: (10**9, "a test budget"))
    check_image_memory(tmp_path / "ok.jpg", 10_000, 10_000, 7)  # 0.7 GB fits
    with pytest.raises(SlideError, match=r"x\.jpg: the image claims 20000x10000 px .* 1\.4 GB .* 1\.0 GB"):
        check_image_memory(tmp_path / "x.jpg", 20_000, 10_000, 7)


def test_real_her2st_jpegs_still_open_and_pil_limit_untouched(her2st):
    limit = Image.MAX_IMAGE_PIXELS
    for sec in ("C2", "C5"):
        with open_slide(her2st / "images" / f"{sec}_HE.jpg", mpp=0.73) as slide:
            width, height = slide.dimensions
            assert width * height > 85e6 and slide.array.dtype == np.uint8  # ~92 Mpx each
            assert slide.read_region((4000, 4000), 0, (8, 8)).shape == (8, 8, 3)
    assert limit == Image.MAX_IMAGE_PIXELS


def test_corrupt_and_mislabelled_plain_images(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (300, 200), (180, 90, 140)).save(good, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(SlideError, match=r"cut\.jpg: cannot (read the JPEG header|decode image)"):
        open_slide(cut, mpp=1.0)
    fake = tmp_path / "fake.png"
    fake.write_text("hello, not an image")
    with pytest.raises(SlideError, match=r"fake\.png: not a JPEG, PNG or BMP image"):
        open_slide(fake, mpp=1.0)
    png_as_jpg = tmp_path / "really_png.jpg"
    Image.new("L", (40, 30), 100).save(png_as_jpg, format="PNG")
    with open_slide(png_as_jpg, mpp=1.0) as slide:  # content decides, and greyscale becomes RGB
        assert slide.dimensions == (40, 30) and slide.array.shape == (30, 40, 3)


def test_visium_hires_png_bomb_is_an_input_error(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    copy = tmp_path / "S1"
    shutil.copytree(sr, copy)
    bomb_png(copy / "spatial" / "tissue_hires_image.png")
    with pytest.raises(InputError, match=r"tissue_hires_image\.png: refused to decode, the header claims"):
        read_visium(copy, slide=slide)


# --------------------------------------------------------------------------- .h5ad files and study folders


def test_read_h5ad_names_the_file(synth_study, tmp_path):
    with pytest.raises(InputError, match=r"h5ad file .*missing\.h5ad does not exist"):
        read_h5ad(tmp_path / "missing.h5ad")
    (tmp_path / "folder.h5ad").mkdir()
    with pytest.raises(InputError, match=r"folder\.h5ad is a folder"):
        read_h5ad(tmp_path / "folder.h5ad")
    text = tmp_path / "text.h5ad"
    text.write_text("barcode,x\n")
    with pytest.raises(InputError, match=r"text\.h5ad: not an HDF5 file"):
        read_h5ad(text)
    with h5py.File(tmp_path / "other.h5ad", "w") as f:
        f["matrix"] = np.arange(3)
    with pytest.raises(InputError, match=r"other\.h5ad: an HDF5 file but not readable as AnnData"):
        read_h5ad(tmp_path / "other.h5ad")
    sr, slide = _section(synth_study)
    good = write_h5ad(read_visium(sr, slide=slide), tmp_path / "good.h5ad")
    assert read_h5ad(good).n_obs > 0


def test_cli_pair_and_embed_refuse_bad_inputs(synth_study, tmp_path):
    text = tmp_path / "notes.h5ad"
    text.write_text("not anndata")
    assert_user_error(
        histokg_cli("pair", text, "-o", tmp_path / "p.h5ad"), "h5ad file ", "notes.h5ad", "not an HDF5"
    )
    # embed reads its spot inputs before the model, so any existing file stands in for the checkpoint
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"0")
    assert_user_error(
        histokg_cli("embed", "--checkpoint", ckpt, text, "-o", tmp_path / "e.h5ad"),
        "notes.h5ad",
        "not an HDF5",
    )
    outs = synth_study / "sections" / "S1"
    assert_user_error(
        histokg_cli("embed", "--checkpoint", ckpt, outs, "-o", tmp_path / "e.h5ad"),
        f"{outs} is not a histokg study folder: it has no study.json",
    )


def test_load_study_errors(synth_study, tmp_path):
    with pytest.raises(InputError, match="has no study.json"):
        load_study(tmp_path)
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        load_study(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "study.json").write_text("{ nope")
    with pytest.raises(InputError, match=r"study\.json:1: invalid JSON"):
        load_study(broken)
    # the region names of the truth come from the manifest itself (no synthesis code needed to read it)
    (broken / "study.json").write_text('{"sections": [{"library_id": "S1"}]}')
    with pytest.raises(InputError, match=r"study\.json: expected 'regions', a list of region names"):
        load_study(broken)


# --------------------------------------------------------------------------- repeated genes, fractional counts


def _her2st_subset(her2st: Path, n_genes: int = 300) -> pd.DataFrame:
    return pd.read_csv(her2st / "counts" / "C5.tsv.gz", sep="\t", index_col=0).iloc[:, :n_genes]


def test_cli_read_legacy_sums_a_repeated_gene_column_of_real_counts(her2st, tmp_path):
    table = _her2st_subset(her2st)
    if "ERBB2" not in table.columns:
        table["ERBB2"] = pd.read_csv(her2st / "counts" / "C5.tsv.gz", sep="\t", index_col=0)["ERBB2"]
    genes = list(table.columns)
    other = genes[1]  # its counts are written a second time under the name ERBB2
    extra = pd.DataFrame({"ERBB2": table[other].to_numpy()}, index=table.index)
    versioned = pd.DataFrame({f"{genes[2]}.1": table[genes[3]].to_numpy()}, index=table.index)
    dup = pd.concat([table, extra, versioned], axis=1)
    assert list(dup.columns).count("ERBB2") == 2
    counts = tmp_path / "C5_dup.tsv"
    dup.to_csv(counts, sep="\t")
    proc = histokg_cli(
        "read",
        "legacy",
        counts,
        her2st / "spots" / "C5_selection.tsv",
        her2st / "images" / "C5_HE.jpg",
        "--library-id",
        "C5",
        "-o",
        tmp_path / "c5.h5ad",
    )
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "occur more than once" in line)
    assert "C5_dup.tsv: 1 gene names occur more than once (2 columns in all)" in warning
    assert "ERBB2 (2 columns, ids ERBB2)" in warning
    adata = ad.read_h5ad(tmp_path / "c5.h5ad")
    assert adata.var_names.is_unique and adata.n_vars == len(genes) + 1
    assert not any(g.startswith("ERBB2") and g != "ERBB2" for g in adata.var_names)  # nothing invented
    assert f"{genes[2]}.1" in adata.var_names  # a real name that merely looks mangled is kept as is
    expected = table.loc[adata.obs["barcode"], "ERBB2"].to_numpy() + table.loc[adata.obs["barcode"], other]
    got = adata[:, "ERBB2"].layers["counts"].toarray().ravel()
    np.testing.assert_array_equal(got, expected.to_numpy())
    assert adata.layers["counts"].dtype == np.int32
    assert adata.uns["spatial"]["C5"]["metadata"]["counts_integer"]


def test_visium_repeated_symbols_are_summed_with_ids_joined(synth_study, tmp_path, caplog):
    sr, slide = _section(synth_study)
    ref = read_visium(sr, slide=slide, library_id="S1")
    copy = tmp_path / "S1"
    shutil.copytree(sr, copy)
    names = list(ref.var_names)
    ids = [f"ENSG{i:011d}" for i in range(len(names))]
    names[5] = names[4]
    write_10x_h5(copy / "filtered_feature_bc_matrix.h5", ref.layers["counts"], ref.obs["barcode"], ids, names)
    with caplog.at_level(logging.WARNING):
        adata = read_visium(copy, slide=slide, library_id="S1")
    assert "1 gene names occur more than once" in caplog.text and ids[4] in caplog.text
    assert adata.n_vars == ref.n_vars - 1 and adata.var_names.is_unique
    assert adata.var.loc[names[4], "gene_ids"] == f"{ids[4]};{ids[5]}"
    summed = ref.layers["counts"][:, 4] + ref.layers["counts"][:, 5]
    assert (adata[:, names[4]].layers["counts"] != summed).nnz == 0
    assert ref.var_names[5] not in adata.var_names


def test_fractional_counts_are_kept_and_reported(her2st, tmp_path, caplog):
    table = _her2st_subset(her2st, 50).astype(float)
    spot, gene = table.index[3], table.columns[7]
    table.loc[spot, gene] = 2.5
    counts = tmp_path / "frac.tsv"
    table.to_csv(counts, sep="\t")
    with caplog.at_level(logging.WARNING):
        adata = read_legacy_st(
            counts, her2st / "spots" / "C5_selection.tsv", her2st / "images" / "C5_HE.jpg", library_id="C5"
        )
    assert "frac.tsv: counts are not whole numbers (1 of" in caplog.text
    assert f"e.g. 2.5 for spot '{spot}', gene '{gene}'" in caplog.text and "not rounded" in caplog.text
    assert adata.layers["counts"].dtype == np.float32
    assert adata[f"C5_{spot}", gene].layers["counts"].toarray()[0, 0] == 2.5  # never rounded
    assert adata.uns["spatial"]["C5"]["metadata"]["counts_integer"] is False


# --------------------------------------------------------------------------- Space Ranger positions


def _positions(sr: Path) -> pd.DataFrame:
    return pd.read_csv(sr / "spatial" / "tissue_positions.csv")


def test_malformed_v1_positions_say_what_was_expected(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    pos = _positions(sr)
    for n_cols in (7, 5):
        copy = tmp_path / f"v1_{n_cols}"
        shutil.copytree(sr, copy)
        (copy / "spatial" / "tissue_positions.csv").unlink()
        bad = pos.assign(extra=1) if n_cols == 7 else pos.drop(columns=["in_tissue"])
        bad.to_csv(copy / "spatial" / "tissue_positions_list.csv", header=False, index=False)
        with pytest.raises(InputError) as err:
            read_visium(copy, slide=slide)
        msg = str(err.value)
        assert (
            "tissue_positions_list.csv: expected 6 columns (barcode, in_tissue, array_row, array_col" in msg
        )
        assert f"without a header, found {n_cols} column(s)" in msg
    # a v1 file that does carry the header row is read like v2
    copy = tmp_path / "v1_header"
    shutil.copytree(sr, copy)
    (copy / "spatial" / "tissue_positions.csv").unlink()
    pos.to_csv(copy / "spatial" / "tissue_positions_list.csv", index=False)
    assert read_visium(copy, slide=slide).n_obs > 0


def test_malformed_v2_header_says_what_was_expected(synth_study, tmp_path):
    sr, slide = _section(synth_study)
    pos = _positions(sr)
    renamed = tmp_path / "renamed"
    shutil.copytree(sr, renamed)
    pos.rename(columns={"pxl_row_in_fullres": "row_px"}).to_csv(
        renamed / "spatial" / "tissue_positions.csv", index=False
    )
    with pytest.raises(
        InputError, match=r"tissue_positions\.csv: expected a header row naming 6 columns .*'row_px'"
    ):
        read_visium(renamed, slide=slide)
    headerless = tmp_path / "headerless"
    shutil.copytree(sr, headerless)
    pos.to_csv(headerless / "spatial" / "tissue_positions.csv", index=False, header=False)
    with pytest.raises(InputError, match="looks like data: a headerless Space Ranger 1.x file") as err:
        read_visium(headerless, slide=slide)
    first = (headerless / "spatial" / "tissue_positions.csv").read_text().splitlines()[0]
    assert f"the first row is {first!r}" in str(err.value)  # as written, not as pandas renamed it


# --------------------------------------------------------------------------- slides that moved


def test_source_image_path_is_absolute(synth_study, monkeypatch):
    monkeypatch.chdir(synth_study)
    adata = read_visium(Path("sections/S1"), slide=Path("slides/S1.tiff"), library_id="S1")
    recorded = adata.uns["spatial"]["S1"]["metadata"]["source_image_path"]
    assert Path(recorded).is_absolute() and Path(recorded) == (synth_study / "slides" / "S1.tiff").resolve()
    assert Path(adata.uns["spatial"]["S1"]["metadata"]["source_path"]).is_absolute()
    from histokg.tl.embed import tile_adata

    tiles = tile_adata(Path("slides/S2.tiff"), PairingConfig(), library_id="S2")
    assert Path(tiles.uns["spatial"]["S2"]["metadata"]["source_image_path"]).is_absolute()


def _moved(synth_study: Path, tmp_path: Path) -> tuple[ad.AnnData, Path]:
    """Section S1 whose slide was recorded in a folder that no longer holds it; the slide is in ``moved/``."""
    sr, slide = _section(synth_study)
    adata = read_visium(sr, slide=slide, library_id="S1")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(slide, moved / "S1.tiff")
    adata.uns["spatial"]["S1"]["metadata"]["source_image_path"] = str(tmp_path / "gone" / "S1.tiff")
    return adata, moved


def test_slide_dir_repoints_moved_slides(synth_study, tmp_path):
    adata, moved = _moved(synth_study, tmp_path)
    with pytest.raises(InputError) as err:
        SpotPatchDataset(adata)
    msg = str(err.value)
    assert (
        "library 'S1': slide " in msg and str(tmp_path / "gone" / "S1.tiff") in msg and "--slide-dir" in msg
    )
    ds = SpotPatchDataset(adata, slide_dir=moved)
    assert ds.paths["S1"] == moved / "S1.tiff" and ds[0]["image"].shape == (3, 224, 224)
    with pytest.raises(InputError, match=r"has no file named 'S1\.tiff'"):
        slide_paths(adata, slide_dir=tmp_path)
    pair_spots(adata, PairingConfig(patch_um=112, patch_px=224), slide_dir=moved)
    assert adata.uns["spatial"]["S1"]["metadata"]["source_image_path"] == str((moved / "S1.tiff").resolve())
    # explicit slides still win
    assert slide_paths(adata, {"S1": moved / "S1.tiff"})["S1"] == moved / "S1.tiff"


def test_slide_dir_refuses_two_libraries_with_one_slide_name(synth_study, tmp_path):
    (sr_a, slide_a), (sr_b, slide_b) = _section(synth_study, "S1"), _section(synth_study, "S2")
    a = read_visium(sr_a, slide=slide_a, library_id="A")
    b = read_visium(sr_b, slide=slide_b, library_id="B")
    a.uns["spatial"]["A"]["metadata"]["source_image_path"] = str(tmp_path / "x" / "slide.tiff")
    b.uns["spatial"]["B"]["metadata"]["source_image_path"] = str(tmp_path / "y" / "slide.tiff")
    both = ad.concat([a, b], label="library_id", keys=["A", "B"], uns_merge="unique")
    (tmp_path / "slides").mkdir()
    shutil.copy(slide_a, tmp_path / "slides" / "slide.tiff")
    with pytest.raises(InputError, match="libraries 'A' and 'B' both record a slide named 'slide.tiff'"):
        slide_paths(both, slide_dir=tmp_path / "slides")


def test_cli_pair_with_moved_slides(synth_study, tmp_path):
    adata, moved = _moved(synth_study, tmp_path)
    h5 = write_h5ad(adata, tmp_path / "s1.h5ad")
    assert_user_error(
        histokg_cli("pair", h5, "-o", tmp_path / "p.h5ad"),
        "library 'S1': slide ",
        "gone/S1.tiff",
        "does not exist",
        "--slide-dir",
    )
    proc = histokg_cli("pair", h5, "-o", tmp_path / "p.h5ad", "--slide-dir", moved)
    assert proc.returncode == 0, proc.stderr
    paired = ad.read_h5ad(tmp_path / "p.h5ad")
    assert paired.uns["spatial"]["S1"]["metadata"]["source_image_path"] == str((moved / "S1.tiff").resolve())


# --------------------------------------------------------------------------- scanpy / squidpy interoperability


def test_synthetic_section_reads_with_scanpy_and_squidpy(synth_study):
    import scanpy as sc
    import squidpy as sq

    sr, slide = _section(synth_study, "S2")
    ours = read_visium(sr, slide=slide)
    with h5py.File(sr / "filtered_feature_bc_matrix.h5") as f:
        assert f.attrs["filetype"] == "matrix" and f.attrs["software_version"].startswith("histokg-")
    for reader in (sc.read_visium, sq.read.visium):
        adata = reader(sr)
        assert list(adata.uns["spatial"]) == ["S2"], reader
        assert adata.n_obs == ours.n_obs and adata.n_vars == ours.n_vars
        assert (
            adata.uns["spatial"]["S2"]["images"]["hires"].shape[:2]
            == ours.uns["spatial"]["S2"]["images"]["hires"].shape[:2]
        )
        # both read obsm["spatial"] as (x, y) = (pxl_col_in_fullres, pxl_row_in_fullres), as the contract does
        xy = pd.DataFrame(adata.obsm["spatial"], index=adata.obs_names).loc[ours.obs["barcode"]]
        np.testing.assert_allclose(xy.to_numpy(dtype=float), ours.obsm["spatial"])


def test_boolean_flags_colour_spatial_scatter_and_still_mask(synth_adata, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    adata = synth_adata[synth_adata.obs["library_id"] == "S1"].copy()
    pair_spots(adata)
    for col in ("in_tissue", "patch_partial", "on_tissue_mask"):
        # bool categories (anndata drops unused ones when subsetting: S1's spots are all in tissue)
        assert adata.obs[col].cat.categories.dtype == bool, col
    assert list(adata.obs["on_tissue_mask"].cat.categories) == [False, True]
    back = ad.read_h5ad(write_h5ad(adata, tmp_path / "paired.h5ad"))
    assert list(back.obs["on_tissue_mask"].cat.categories) == [False, True]
    for col in ("in_tissue", "on_tissue_mask", "patch_partial"):
        sq.pl.spatial_scatter(back, color=col, library_id="S1", img_res_key="hires")
        fig = plt.gcf()
        legend = fig.axes[0].get_legend()  # coloured as groups, not as a (failing) continuous value
        assert {t.get_text() for t in legend.get_texts()} <= {"False", "True"}, col
        fig.savefig(tmp_path / f"{col}.png", dpi=50)
        plt.close(fig)
        assert np.asarray(Image.open(tmp_path / f"{col}.png").convert("RGB")).std() > 10
    # the flags are still masks
    off = ~back.obs["on_tissue_mask"].to_numpy(bool)
    assert back[back.obs["on_tissue_mask"]].n_obs + int(off.sum()) == back.n_obs
    assert back.obs["patch_partial"].to_numpy(bool).any() and off.any()


# --------------------------------------------------------------------------- progress


def test_convert_and_tile_show_progress(cmu_slide, tmp_path, capsys):
    from histokg.wsi import TilingConfig, convert, detect_tissue, tile_slide, tiles_overlay

    convert(cmu_slide, tmp_path / "cmu.tiff")
    err = capsys.readouterr().err
    assert "writing cmu.tiff" in err and "tile row" in err and "100%" in err  # every tile row counted
    with open_slide(cmu_slide) as slide:
        mask = detect_tissue(slide)
        tiles_overlay(tile_slide(slide, TilingConfig(), mask), mask)
    assert "drawing tiles" in capsys.readouterr().err
    assert os.path.getsize(tmp_path / "cmu.tiff") > 100_000
