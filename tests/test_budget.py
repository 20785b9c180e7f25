"""Work budgets (:mod:`histokg.budget`): every value that sets an amount of work (MPP, tile and patch size,
spot size, tile count, pixels read per patch) is checked before anything is allocated, with one line
naming the value; before, ``--mpp 1e-9`` was a traceback, ``tile --mpp 1e-6`` asked for 892 GiB and
``--mpp 999`` ran the machine out of memory."""

from __future__ import annotations

import time

import numpy as np
import pytest
from bad_values_fixtures import one_line_error, tiny_model
from PIL import Image

from histokg.errors import InputError
from histokg.wsi import open_slide

# --------------------------------------------------------------------------- MPP and extent


@pytest.mark.parametrize(
    ("command", "mpp", "expected"),
    [
        (
            "convert",
            "1e-9",
            "microns per pixel 1e-09 is not plausible; it must be between 0.01 and 100 um/px",
        ),
        ("tile", "1e-6", "microns per pixel 1e-06 is not plausible"),
        ("tile", "999", "microns per pixel 999.0 is not plausible"),
        ("tile", "90", "2220x2967 px at 90 um/px would be 200 x 267 mm, larger than any section"),
        ("convert", "nan", "microns per pixel nan is not plausible"),
    ],
)
def test_an_implausible_mpp_is_one_line_before_anything_is_read(
    cmu_slide, tmp_path, capsys, command, mpp, expected
):
    out = tmp_path / ("out.tiff" if command == "convert" else "tiles")
    start = time.perf_counter()
    line = one_line_error(capsys, command, cmu_slide, out, "--mpp", mpp)
    assert line.startswith(f"error: slide {cmu_slide}: ") and expected in line, line
    assert time.perf_counter() - start < 10 and not out.exists()


def test_a_plain_image_claiming_metres_is_refused_from_its_header(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(path)
    with open_slide(path, mpp=90) as slide:  # 36 x 27 mm is a plausible section
        assert slide.dimensions == (400, 300)
    big = tmp_path / "big.png"
    Image.fromarray(np.full((100, 3000, 3), 200, np.uint8)).save(big)
    with pytest.raises(
        InputError, match=r"3000x100 px at 90 um/px would be 270 x 9 mm, larger than any section"
    ):
        open_slide(big, mpp=90)


# --------------------------------------------------------------------------- tiles, patches, reads


def test_the_tile_grid_is_counted_before_it_is_allocated(cmu_slide, tmp_path, capsys):
    from histokg.budget import tile_count
    from histokg.wsi import TilingConfig, tile_slide

    line = one_line_error(
        capsys, "tile", cmu_slide, tmp_path / "t", "--set", "patch_px=8", "--set", "stride_px=1"
    )
    assert "6,522,432 tiles, more than the 2,000,000 allowed" in line and "8-px tiles at 0.5 um/px" in line
    cfg = TilingConfig(target_mpp=0.5, patch_px=224, min_tissue=0.0)
    with open_slide(cmu_slide) as slide:
        tiles = tile_slide(slide, cfg)
        assert len(tiles) == tile_count(
            *slide.dimensions, slide.mpp, 0.5, 224
        )  # min_tissue 0: every grid tile
        with pytest.raises(InputError, match=r"tiles, more than the 10 allowed"):
            tile_slide(slide, cfg, max_tiles=10)


def test_embed_slide_and_upload_regions_take_a_tile_cap(cmu_slide):
    from histokg.retrieval.regions import embed_regions
    from histokg.tl import embed_slide

    model = tiny_model(["G0"])
    with pytest.raises(InputError, match=r"more than the 5 allowed"):
        embed_slide(cmu_slide, model, max_tiles=5, device="cpu")
    with pytest.raises(InputError, match=r"more than the 5 allowed"):
        embed_regions(model, cmu_slide, max_tiles=5)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("patch_px=100000", "patch_px: must be a whole number of pixels in 8..4096, got 100000"),
        ("patch_um=1e9", "patch_um: must be a number of microns in (0, 10000], got 1000000000.0"),
        ("patch_um=0.001", "is not plausible"),
        ("mask.mask_mpp=1e-9", "mask.mask_mpp: microns per pixel 1e-09 is not plausible"),
    ],
)
def test_pairing_patch_size_is_bounded(legacy_adata, tmp_path, capsys, setting, expected):
    from histokg.st.contract import write_h5ad

    path = write_h5ad(legacy_adata, tmp_path / "s.h5ad")
    line = one_line_error(capsys, "pair", path, "-o", tmp_path / "p.h5ad", "--set", setting)
    assert line.startswith(f"error: --set {setting}: ") and expected in line, line


def test_a_patch_read_is_bounded(tmp_path):
    """A 112 um patch of a plain image at 0.01 um/px is 11,200 px a side: refused before reading."""
    path = tmp_path / "tiny.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
    with open_slide(path, mpp=0.01) as slide:
        with pytest.raises(
            InputError, match=r"a 112 um patch at 0.01 um/px is a 11,200 px square, more than"
        ):
            slide.read_physical((32, 32), 112.0, 224)
        patch, _ = slide.read_physical((32, 32), 0.64, 64)  # the whole image, as before
        assert patch.shape == (64, 64, 3)


def test_the_mask_closing_disk_is_capped_by_the_image(tmp_path):
    """Before: a 32 um closing at 2e-4 um/px built a 345,947 px disk (892 GiB)."""
    from histokg.wsi import tissue_mask_from_image

    rgb = np.full((16, 16, 3), 240, np.uint8)
    rgb[4:12, 4:12] = (180, 90, 160)
    start = time.perf_counter()
    mask, _ = tissue_mask_from_image(rgb, 2e-4)
    assert mask.shape == (16, 16) and time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--tile", "0"], "the tile size must be a multiple of 16 in 16..4096 px, got 0"),
        (["--tile", "1048576"], "the tile size must be a multiple of 16 in 16..4096 px, got 1048576"),
        (["--quality", "0"], "JPEG quality must be a whole number in 1..100, got 0"),
    ],
)
def test_convert_tile_size_and_quality_are_bounded(cmu_slide, tmp_path, capsys, option, expected):
    line = one_line_error(capsys, "convert", cmu_slide, tmp_path / "o.tiff", *option)
    assert expected in line and not (tmp_path / "o.tiff").exists()


def test_an_index_table_mpp_is_checked_like_a_slide_mpp(tmp_path):
    from histokg.retrieval.shards import specs_from_table

    (tmp_path / "s.png").write_bytes(b"")
    table = tmp_path / "slides.csv"
    table.write_text("path,mpp\ns.png,1e-9\n")
    with pytest.raises(InputError, match=r"slides.csv, row 2: microns per pixel '1e-9' is not plausible"):
        specs_from_table(table)
