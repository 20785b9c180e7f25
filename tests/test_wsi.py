"""Slides: the real OpenSlide test slide, pyramids we write, tissue masks, tiling and bad input."""

from __future__ import annotations

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from histokg.errors import InputError, SlideError
from histokg.wsi import (
    TilingConfig,
    convert,
    detect_tissue,
    load_tiles_h5,
    open_slide,
    save_png,
    save_tiles_h5,
    slide_dimensions,
    tile_slide,
    tiles_overlay,
    write_pyramid,
)


def smooth_image(h=1500, w=2000, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [128 + 100 * np.sin(xx / 97.0), 128 + 100 * np.cos(yy / 61.0), 128 + 60 * np.sin((xx + yy) / 150.0)],
        -1,
    )
    return np.clip(base + rng.normal(0, 1, base.shape), 0, 255).astype(np.uint8)


def test_cmu_slide_read_mask_tile(cmu_slide, tmp_path):
    with open_slide(cmu_slide) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        region = slide.read_region((1000, 1000), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        mask = detect_tissue(slide)
        frac = mask.mask.mean()
        assert 0.2 < frac < 0.95, frac
        tiles = tile_slide(slide, TilingConfig(target_mpp=0.5, patch_px=224, min_tissue=0.5), mask)
        assert len(tiles) > 20
        assert tiles.level == 0 and tiles.level_size == round(224 * 0.5 / 0.499)
        # Every kept tile is mostly tissue: its pixels are less bright than glass on average.
        x, y = tiles.coords[len(tiles) // 2]
        patch = slide.read_region((int(x), int(y)), tiles.level, (tiles.level_size, tiles.level_size))
        assert patch.mean() < 225
        h5 = save_tiles_h5(tiles, tmp_path / "cmu.h5")
        png = save_png(tiles_overlay(tiles, mask), tmp_path / "cmu.png")
    coords, attrs = load_tiles_h5(h5)
    np.testing.assert_array_equal(coords, tiles.coords)
    for key in (
        "patch_size",
        "patch_level",
        "downsample",
        "downsampled_level_dim",
        "level_dim",
        "name",
        "save_path",
    ):
        assert key in attrs, key  # CLAM's attributes
    assert attrs["target_mpp"] == 0.5 and attrs["name"] == "CMU-1-Small-Region"
    with h5py.File(h5) as f:
        assert f["tissue_fraction"][:].min() >= 0.5
    assert Image.open(png).size[0] > 100


def test_read_physical_matches_direct_read(cmu_slide):
    with open_slide(cmu_slide) as slide:
        patch, partial = slide.read_physical((1100.0, 1500.0), size_um=112 * 0.499, out_px=112)
        assert not partial
        direct = slide.read_region((1100 - 56, 1500 - 56), 0, (112, 112))
        np.testing.assert_array_equal(patch, direct)
        edge, partial = slide.read_physical((5.0, 5.0), size_um=56.0, out_px=112)
        assert partial and (edge[:20, :20] == 255).all()  # padded white outside the image


def test_read_physical_upsampling_matches_pillow_bilinear(cmu_slide):
    """Enlarging goes through OpenCV (benchmarks/tiling.py): the same pixels as Pillow's bilinear
    resize of the same region to within one grey level, inside the slide and at its padded edge."""
    with open_slide(cmu_slide) as slide:
        for centre in ((1100.0, 1500.0), (10.0, 10.0)):
            patch, _ = slide.read_physical(centre, size_um=112.0, out_px=320)  # 224 px read, 320 out
            side0 = int(round(112.0 / slide.mpp))
            x0, y0 = (int(round(c - 112.0 / slide.mpp / 2)) for c in centre)
            region = Image.fromarray(slide.read_region((x0, y0), 0, (side0, side0)))
            ref = np.asarray(region.resize((320, 320), Image.Resampling.BILINEAR)).astype(int)
            assert patch.shape == (320, 320, 3) and patch.dtype == np.uint8
            assert np.abs(patch.astype(int) - ref).max() <= 1


def test_pyramid_roundtrip_through_openslide(tmp_path):
    img = smooth_image()
    out = write_pyramid(img, tmp_path / "p.tiff", mpp=0.25, min_side=256)
    assert openslide.OpenSlide.detect_format(str(out)) == "generic-tiff"
    with open_slide(out) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_count >= 3
        assert slide.level_dimensions[1] == (1000, 750)
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        back = slide.read_region((0, 0), 0, (2000, 1500)).astype(int)
        assert np.abs(back - img).mean() < 3.0  # JPEG at quality 90
        # best level for 1 um/px on a 0.25 um/px base is the 4x level
        assert slide.best_level(1.0) == 2
        patch, _ = slide.read_physical((1000, 750), size_um=100, out_px=100)
        ref = np.asarray(
            Image.fromarray(img[550:950, 800:1200]).resize((100, 100), Image.Resampling.BOX)
        ).astype(int)
        assert np.abs(patch.astype(int) - ref).mean() < 6


def test_convert_plain_image(tmp_path):
    src = tmp_path / "plain.png"
    Image.fromarray(smooth_image(600, 900)).save(src)
    with pytest.raises(SlideError, match="plain image carries no microns-per-pixel"):
        open_slide(src)
    out = convert(src, tmp_path / "plain.tiff", mpp=0.8)
    with open_slide(out) as slide:
        assert slide.mpp == pytest.approx(0.8) and slide.dimensions == (900, 600)


def test_slide_dimensions_reads_headers_only(cmu_slide, tmp_path):
    """The size of a pyramid and of a plain image without their pixels: a JPEG cut after its header has a
    size (open_slide, which decodes it, fails), and the checks open_slide makes come first."""
    assert slide_dimensions(cmu_slide) == (2220, 2967)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(smooth_image(600, 3000)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:2000])
    assert slide_dimensions(cut, mpp=0.5) == (3000, 600)
    with pytest.raises(SlideError, match=r"cut\.jpg.*(truncated|corrupt)"):
        open_slide(cut, mpp=0.5)
    with pytest.raises(SlideError, match=r"whole\.jpg: a plain image carries no microns-per-pixel"):
        slide_dimensions(whole)
    with pytest.raises(SlideError, match=r"whole\.jpg: microns per pixel 0.0 is not plausible"):
        slide_dimensions(whole, mpp=0.0)
    with pytest.raises(SlideError, match=r"whole\.jpg: 3000x600 px at 100 um/px.*larger than any section"):
        slide_dimensions(whole, mpp=100.0)
    with pytest.raises(SlideError, match="missing.svs does not exist"):
        slide_dimensions(tmp_path / "missing.svs")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(SlideError, match=r"notes\.jpg: not a JPEG, PNG or BMP image"):
        slide_dimensions(text, mpp=0.5)


def test_corrupt_slide_is_named(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(4000))
    with pytest.raises(SlideError, match="broken.svs"):
        open_slide(bad)
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="not a whole-slide format"):
        open_slide(text)
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_truncated_tiff_gives_clear_error(tmp_path):
    good = write_pyramid(smooth_image(), tmp_path / "good.tiff", mpp=0.5)
    data = good.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match=r"cut\.tiff.*(truncated|corrupt)"), open_slide(cut) as slide:
        w, h = slide.dimensions
        slide.read_region((0, 0), 0, (w, h))


def test_missing_mpp_needs_override(tmp_path):
    path = tmp_path / "nompp.tiff"
    tifffile.imwrite(
        path, smooth_image(), tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None
    )
    with pytest.raises(SlideError, match=r"nompp\.tiff: no microns-per-pixel"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5


def test_empty_tissue_mask(tmp_path):
    blank = write_pyramid(np.full((800, 800, 3), 245, np.uint8), tmp_path / "blank.tiff", mpp=0.5)
    with (
        open_slide(blank) as slide,
        pytest.raises(InputError, match=r"blank\.tiff: the tissue mask is empty"),
    ):
        detect_tissue(slide)


def _noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("shape", "size"), [((1001, 757), (100, 131)), ((600, 900), (451, 300))])
def test_box_resize_is_pillows_box_resize_without_the_copy(shape, size):
    """Thumbnails of plain images come from box_resize (two passes over bands): the same bytes as
    Pillow resizing the whole image at once."""
    from histokg.wsi.slide import box_resize

    image = _noise_image(*shape)
    want = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    np.testing.assert_array_equal(box_resize(image, *size, rows=64), want)


def test_pyramid_levels_by_bands_equal_whole_reduce():
    from histokg.wsi.pyramid import pyramid_levels

    image = _noise_image(1203, 777, seed=1)
    levels = pyramid_levels(image, min_side=100, rows=128)
    assert [lv.shape[:2] for lv in levels] == [(1203, 777), (602, 389), (301, 195), (151, 98), (76, 49)]
    for above, level in zip(levels[:-1], levels[1:], strict=True):
        np.testing.assert_array_equal(level, np.asarray(Image.fromarray(above).reduce(2)))


def test_plain_jpeg_decoded_once_with_pillows_pixels_and_truncation_refused(tmp_path):
    """An RGB JPEG is decoded by imagecodecs into the slide's one array: the pixels Pillow decodes; a
    truncated file is refused as before; a grey JPEG still goes through Pillow (as RGB)."""
    path = tmp_path / "he.jpg"
    Image.fromarray(smooth_image()).save(path, quality=85)
    with open_slide(path, mpp=0.5) as slide:
        np.testing.assert_array_equal(slide.read_level(0), np.asarray(Image.open(path).convert("RGB")))
    data = path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=r"cut\.jpg: cannot decode image.*truncated"):
        open_slide(cut, mpp=0.5)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(smooth_image()[..., 0]).save(grey)
    with open_slide(grey, mpp=0.5) as slide:
        assert slide.read_level(0).shape == (*smooth_image().shape[:2], 3)
