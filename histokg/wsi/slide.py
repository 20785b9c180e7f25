"""One reader interface over whole-slide images.

:func:`open_slide` returns a :class:`Slide` for any pyramid OpenSlide opens (.svs, .ndpi, .mrxs,
.scn, generic tiled .tiff, ...) and for large plain images (.jpg, .png, e.g. legacy-ST H&E at full
resolution), whose microns per pixel (MPP) the caller supplies. All coordinates are level-0 pixels,
(x, y), as in OpenSlide. Reads return RGB ``uint8`` arrays; area outside the image is white.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from tqdm.auto import tqdm

from histokg import budget
from histokg.errors import SlideError
from histokg.wsi.memory import check_image_memory

log = logging.getLogger(__name__)

PLAIN_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
OPENSLIDE_SUFFIXES = {
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
}
# Peak memory per pixel while decoding a plain image: PIL's 4-byte (RGBX) buffer plus the 3-byte RGB array.
PLAIN_DECODE_BYTES_PER_PX = 7
# Reading a whole OpenSlide level: OpenSlide's RGBA buffer, its PIL copy and the RGB array.
OPENSLIDE_READ_BYTES_PER_PX = 11
# Plain image formats opened without PIL's global pixel limit (our own memory check replaces it).
_PLAIN_FORMATS = ("JPEG", "PNG", "BMP")
# Rows per band when a whole level is read piecewise (bounded OpenSlide buffers, progress).
_BAND_BYTES = 64 * 2**20


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide. ``mpp`` overrides (or, for plain images and TIFFs without it, supplies) level-0 um/px."""
    path = _existing_file(path)
    if path.suffix.lower() in PLAIN_SUFFIXES:
        return PlainImageSlide(path, mpp)
    return OpenSlideSlide(path, mpp)


def slide_dimensions(path: str | Path, mpp: float | None = None) -> tuple[int, int]:
    """Level-0 (width, height) of a slide, checked as :func:`open_slide` checks it but without decoding pixels.

    A plain image's header alone is read (its pixels are decoded once, when the slide is used); a pyramid
    is opened by OpenSlide and closed. A missing or unreadable file, an absent or invalid MPP, or a size
    larger than any section is a :class:`~histokg.errors.SlideError` naming the file.
    """
    path = _existing_file(path)
    if path.suffix.lower() not in PLAIN_SUFFIXES:
        with OpenSlideSlide(path, mpp) as slide:
            return slide.dimensions
    mpp = _plain_mpp(path, mpp)
    with _open_plain_header(path) as img:
        width, height = img.size
    budget.check_extent(width, height, mpp, f"slide {path}", error=SlideError)
    return width, height


class Slide:
    """Common interface; see :class:`OpenSlideSlide` and :class:`PlainImageSlide`."""

    path: Path
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    # -- geometry ---------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level that is still at least as fine as ``target_mpp`` (so reads only downscale)."""
        wanted = target_mpp / self.mpp
        best = 0
        for level, down in enumerate(self.level_downsamples):
            if down <= wanted * 1.01:
                best = level
        return best

    # -- pixels -----------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB array of ``size`` (w, h) pixels at ``level``, top-left at level-0 ``location``."""
        return _to_rgb_array(self._read_pil(location, level, size))

    def _read_pil(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """The same region as a PIL image, RGB or (OpenSlide) RGBA, so resizing skips array round trips."""
        raise NotImplementedError

    def read_physical(
        self, center: tuple[float, float], size_um: float, out_px: int, *, scan_mpp: float | None = None
    ) -> tuple[np.ndarray, bool]:
        """A square of ``size_um`` microns centred on level-0 ``center``, resampled to ``out_px``.

        Reads from the best pyramid level for the requested resolution and resizes the rest.
        ``scan_mpp``: show the square as a scan at ``scan_mpp`` um/px would (area-averaged down to
        that resolution first, then resampled to ``out_px``); a slide already that coarse is unchanged.
        Returns the RGB array and whether the square reached past the image edge (padded white).
        """
        side0 = size_um / self.mpp
        x0 = int(round(center[0] - side0 / 2))
        y0 = int(round(center[1] - side0 / 2))
        level = self.best_level(size_um / out_px)
        down = self.level_downsamples[level]
        side = max(1, int(round(side0 / down)))
        budget.check_read(side, size_um, self.level_mpp(level), f"slide {self.path}")
        region = self._read_pil((x0, y0), level, (side, side))
        size = side
        scan_px = max(1, int(round(size_um / scan_mpp))) if scan_mpp else side
        if scan_px < side:  # a coarser scan: average the pixels it would have merged
            region = region.resize((scan_px, scan_px), Image.Resampling.BOX)
            size = scan_px
        if size > out_px:  # downsampling: Pillow's bilinear filter widens with the factor (antialiased)
            region = region.resize((out_px, out_px), Image.Resampling.BILINEAR)
        patch = _to_rgb_array(region, contiguous=size < out_px)
        if size < out_px:
            patch = _upsample(patch, out_px)
        width, height = self.dimensions
        x1, y1 = x0 + int(round(side * down)), y0 + int(round(side * down))
        partial = x0 < 0 or y0 < 0 or x1 > width or y1 > height
        return patch, partial

    def thumbnail(self, max_side: int = 2000) -> tuple[np.ndarray, float]:
        """Whole-slide RGB thumbnail with its longest side at most ``max_side``.

        Returns the image and its scale factor (thumbnail px per level-0 px).
        """
        width, height = self.dimensions
        scale = min(1.0, max_side / max(width, height))
        out_w, out_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        level = 0
        for lv, (w, h) in enumerate(self.level_dimensions):
            if w >= out_w and h >= out_h:
                level = lv
        lw, lh = self.level_dimensions[level]
        if (lw, lh) == (out_w, out_h):
            return np.array(self.read_level(level, progress=True)), out_w / width
        return box_resize(self.read_level(level, progress=True), out_w, out_h), out_w / width

    def read_level(self, level: int = 0, *, progress: bool = False) -> np.ndarray:
        """A whole level as an RGB array, read in horizontal bands; refuses levels that cannot fit in memory."""
        lw, lh = self.level_dimensions[level]
        down = self.level_downsamples[level]
        if level != 0 and abs(down - round(down)) > 1e-9:  # bands need exact level-0 row offsets
            check_image_memory(self.path, lw, lh, OPENSLIDE_READ_BYTES_PER_PX, f"reading level {level} whole")
            return self.read_region((0, 0), level, (lw, lh))
        check_image_memory(
            self.path, lw, lh, 3 + 8 * min(1.0, _BAND_BYTES / max(1, 4 * lw * lh)), f"reading level {level}"
        )
        out = np.empty((lh, lw, 3), dtype=np.uint8)
        band = max(1, _BAND_BYTES // (4 * lw))
        starts = range(0, lh, band)
        for y in tqdm(
            starts,
            desc=f"reading {self.path.name} level {level}",
            unit="band",
            disable=not progress or len(starts) < 2,
        ):
            rows = min(band, lh - y)
            out[y : y + rows] = self.read_region((0, int(round(y * down))), level, (lw, rows))
        return out

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, dims={self.dimensions}, mpp={self.mpp:.4g}, levels={self.level_count})"


class OpenSlideSlide(Slide):
    """Any format OpenSlide reads."""

    def __init__(self, path: Path, mpp: float | None = None):
        self.path = path
        fmt = openslide.OpenSlide.detect_format(str(path))
        if fmt is None:
            hint = ""
            if path.suffix.lower() not in OPENSLIDE_SUFFIXES:
                hint = f" (suffix {path.suffix!r}; plain images must be .jpg/.png)"
            raise SlideError(
                f"slide {path}: not a whole-slide format OpenSlide recognises{hint}, or the file is corrupt "
                "or truncated; expected an .svs/.ndpi/.mrxs/.scn/.tiff pyramid or a plain .jpg/.png"
            )
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"slide {path} ({fmt}): cannot be opened, the file may be corrupt or truncated: {exc}"
            ) from None
        self.format = fmt
        self.properties = dict(self._osr.properties)
        self.mpp = _resolve_mpp(path, self.properties, mpp)
        self.level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        try:
            budget.check_extent(*self.level_dimensions[0], self.mpp, f"slide {path}", error=SlideError)
        except SlideError:
            self._osr.close()
            raise

    def _read_pil(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        try:
            rgba = self._osr.read_region(
                (int(location[0]), int(location[1])), level, (int(size[0]), int(size[1]))
            )
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"slide {self.path}: reading level {level} at {tuple(location)} size {tuple(size)} failed; "
                f"the file may be truncated or corrupt: {exc}"
            ) from None
        return rgba

    def associated_image(self, name: str) -> np.ndarray | None:
        img = self._osr.associated_images.get(name)
        return None if img is None else np.asarray(img.convert("RGB"))

    def close(self) -> None:
        self._osr.close()


class PlainImageSlide(Slide):
    """A single-level image file held in memory (e.g. a legacy-ST full-resolution JPEG)."""

    def __init__(self, path: Path, mpp: float | None):
        self.path = path
        self.mpp = _plain_mpp(path, mpp)
        self._array = _decode_plain_image(path, self.mpp)
        height, width = self._array.shape[:2]
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self.properties: dict[str, str] = {}
        self.format = "plain"

    @property
    def array(self) -> np.ndarray:
        return self._array

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise SlideError(f"slide {self.path}: plain images have one level, level {level} requested")
        return _crop_padded(self._array, int(location[0]), int(location[1]), int(size[0]), int(size[1]))

    def _read_pil(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        return Image.fromarray(self.read_region(location, level, size))

    def read_level(self, level: int = 0, *, progress: bool = False) -> np.ndarray:
        """The image itself (already in memory; read-only, not copied)."""
        if level != 0:
            raise SlideError(f"slide {self.path}: plain images have one level, level {level} requested")
        return self._array

    def close(self) -> None:
        self._array = np.empty((0, 0, 3), np.uint8)


# --------------------------------------------------------------------------- helpers


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise SlideError(f"slide {path} does not exist")
    if not path.is_file():
        raise SlideError(f"slide {path} is not a file")
    return path


def _plain_mpp(path: Path, mpp: float | None) -> float:
    """The checked MPP of a plain image, which the caller must supply."""
    if mpp is None:
        raise SlideError(
            f"slide {path}: a plain image carries no microns-per-pixel; pass mpp "
            "(--mpp) or let the ST reader derive it from the spot pitch"
        )
    return _check_mpp(path, mpp)


def _open_plain_header(path: Path) -> Image.Image:
    """Open a JPEG/PNG/BMP lazily (header only) without PIL's process-wide pixel limit.

    ``Image.open`` refuses images above ``Image.MAX_IMAGE_PIXELS`` (a global, about 179 Mpx), which
    whole-section images exceed; instead of raising that global for every thread, the format's
    opener is called directly and :func:`check_image_memory` bounds the size by the memory left.
    """
    Image.init()
    try:
        with path.open("rb") as fh:
            prefix = fh.read(16)
    except OSError as exc:
        raise SlideError(f"slide {path}: cannot be read ({exc})") from None
    for fmt in _PLAIN_FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(prefix):
            try:
                return factory(str(path), str(path))
            except (OSError, SyntaxError, ValueError, IndexError, Image.DecompressionBombError) as exc:
                raise SlideError(
                    f"slide {path}: cannot read the {fmt} header, the file may be corrupt or truncated: {exc}"
                ) from None
    raise SlideError(
        f"slide {path}: not a JPEG, PNG or BMP image (first bytes {prefix[:4]!r}); "
        "whole-slide formats (.svs, .tiff, ...) are opened with OpenSlide"
    )


def _decode_plain_image(path: Path, mpp: float | None = None) -> np.ndarray:
    """Decode a plain image to RGB after checking that its claimed size fits in memory (and, with
    ``mpp``, that its claimed size is that of a section).

    An RGB JPEG (every H&E JPEG we have met) is decoded by libjpeg-turbo through imagecodecs straight
    into the one array it returns: one decoded copy in memory, where Pillow holds its own 4-byte-per-
    pixel buffer and copies it into the array (peak 7 bytes per pixel). The pixels are Pillow's (the
    same library decodes both). imagecodecs decodes a truncated stream silently, so the stream is
    first read through by Pillow at 1/8 scale (a fraction of a full decode), which raises as a full
    decode would. Other images (PNG, BMP, grey or CMYK JPEG) are decoded by Pillow.
    """
    img = _open_plain_header(path)
    fast = img.format == "JPEG" and img.mode == "RGB"
    try:
        width, height = img.size
        if mpp is not None:
            budget.check_extent(width, height, mpp, f"slide {path}", error=SlideError)
        check_image_memory(path, width, height, 3 if fast else PLAIN_DECODE_BYTES_PER_PX)
    except SlideError:
        img.close()
        raise
    log.info("%s: decoding %dx%d px", path.name, width, height)
    if fast:
        try:
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()  # reads the whole stream: a truncated or corrupt file raises here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise SlideError(
                f"slide {path}: cannot decode image, it may be corrupt or truncated: {exc}"
            ) from None
        finally:
            img.close()
        try:
            return _decode_jpeg_into_array(path, width, height)
        except Exception as exc:  # an encoding libjpeg-turbo's plain API refuses: Pillow decodes it
            log.debug("%s: imagecodecs could not decode it (%s); decoding with Pillow", path.name, exc)
            img = _open_plain_header(path)
    try:
        img.load()
        if img.mode != "RGB":
            converted = img.convert("RGB")
            img.close()
            img = converted
        return np.asarray(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SlideError(
            f"slide {path}: cannot decode image, it may be corrupt or truncated: {exc}"
        ) from None
    finally:
        img.close()


def _decode_jpeg_into_array(path: Path, width: int, height: int) -> np.ndarray:
    """An RGB JPEG decoded by imagecodecs into a new (height, width, 3) array (no second copy)."""
    import imagecodecs

    out = np.empty((height, width, 3), np.uint8)
    decoded = imagecodecs.jpeg8_decode(path.read_bytes(), out=out)
    if decoded.shape != out.shape:  # pragma: no cover - imagecodecs writes into ``out`` or raises
        raise ValueError(f"decoded shape {decoded.shape}, expected {out.shape}")
    return decoded


def _resolve_mpp(path: Path, props: dict[str, str], override: float | None) -> float:
    if override is not None:
        return _check_mpp(path, override)
    raw = props.get(openslide.PROPERTY_NAME_MPP_X)
    if raw is None:
        raise SlideError(
            f"slide {path}: no microns-per-pixel in its metadata (property {openslide.PROPERTY_NAME_MPP_X!r} "
            "is missing); pass mpp (--mpp) for this slide"
        )
    try:
        value = float(raw)
    except ValueError:
        raise SlideError(f"slide {path}: {openslide.PROPERTY_NAME_MPP_X}={raw!r} is not a number") from None
    return _check_mpp(path, value)


def _check_mpp(path: Path, mpp) -> float:
    return budget.check_mpp(mpp, f"slide {path}", error=SlideError)


def _to_rgb_array(img: Image.Image, *, contiguous: bool = False) -> np.ndarray:
    """RGB uint8 array of a PIL image; OpenSlide's (non-premultiplied) RGBA is composited over white.

    Fully opaque regions, the common case inside a slide, come back as a view of the RGBA buffer
    (one copy in all), which keeps spot-patch reading close to a bare ``read_region`` loop; with
    ``contiguous`` (for OpenCV), as a packed RGB copy made by OpenCV, far faster than numpy's
    strided copy.
    """
    arr = np.asarray(img)
    if img.mode != "RGBA":
        return arr
    alpha = arr[..., 3]
    if alpha.min() == 255:
        if contiguous:
            import cv2

            return cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB)
        return arr[..., :3]
    a = alpha[..., None].astype(np.float32) / 255.0
    return np.clip(arr[..., :3] * a + 255.0 * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)


def box_resize(image: np.ndarray, width: int, height: int, rows: int = 512) -> np.ndarray:
    """Pillow's ``BOX`` resize of an RGB array to ``width`` x ``height``, without copying the array whole.

    ``Image.fromarray(image).resize(...)`` first copies the whole image into Pillow (for a plain 9k-px
    JPEG, another 263 MiB beside the decoded array). Pillow resamples horizontally, row by row, into an
    8-bit image and then vertically; done here in the same two passes, the first over bands of
    ``rows`` rows, the result is bit-identical (tests/test_wsi.py) with one narrow intermediate
    (``width`` columns, every row) instead of the copy.
    """
    full_h, full_w = image.shape[:2]
    if (full_w, full_h) == (width, height):
        return np.array(image)
    narrow = np.empty((full_h, width, 3), np.uint8)
    for y in range(0, full_h, rows):
        band = image[y : y + rows]
        narrow[y : y + len(band)] = np.asarray(
            Image.fromarray(band).resize((width, len(band)), Image.Resampling.BOX)
        )
    return np.asarray(Image.fromarray(narrow).resize((width, height), Image.Resampling.BOX))


def _upsample(rgb: np.ndarray, out_px: int) -> np.ndarray:
    """Bilinear upsampling of an RGB patch to ``out_px`` square with OpenCV.

    The same interpolation as Pillow's ``BILINEAR`` when enlarging (pixel centres aligned; the two
    differ by at most one grey level from rounding) at about a tenth of its time, which is what keeps
    spot-patch reading near a bare ``read_region`` loop on slides scanned coarser than the patch
    resolution (benchmarks/tiling.py). Downsampling stays with Pillow, whose filter is antialiased.
    """
    import cv2  # imported here: only patch reading needs OpenCV

    return cv2.resize(rgb, (out_px, out_px), interpolation=cv2.INTER_LINEAR)


def _crop_padded(array: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Crop ``array`` (H, W, 3) to the box, padding with white where it leaves the image."""
    height, width = array.shape[:2]
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    sx0, sy0 = max(x, 0), max(y, 0)
    sx1, sy1 = min(x + w, width), min(y + h, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = array[sy0:sy1, sx0:sx1]
    return out
