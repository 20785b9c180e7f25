"""Spot-patch pairing: one patch per spot, centred on it, of a fixed physical size.

The default patch is 112 um wide, read at 0.5 um/px (224 px), from the pyramid level closest to
that resolution without upsampling. Spots whose patch reaches past the image edge are padded with
white and flagged (``obs["patch_partial"]``); spots off the tissue mask are flagged too
(``obs["on_tissue_mask"]``, next to the reader's ``obs["in_tissue"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import anndata as ad
import numpy as np

from histokg import budget
from histokg.errors import InputError
from histokg.keys import Key
from histokg.st.contract import bool_flag, check_spots, check_spots_in_image
from histokg.wsi.mask import MaskConfig, detect_tissue
from histokg.wsi.slide import Slide, open_slide
from histokg.wsi.stain import DEFAULT_TARGET, STAIN_NORMS, StainStats, target_problem
from histokg.wsi.tiling import draw_overlay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairingConfig:
    """Physical patch geometry."""

    patch_um: float = 112.0
    patch_px: int = 224
    mask: MaskConfig = field(default_factory=MaskConfig)
    # read every patch as a scan at this um/px would show it (e.g. 3.4 to match a low-resolution
    # section); None: the slide's own resolution
    read_mpp: float | None = None
    # stain normalisation of every patch (histokg.wsi.stain): none, or reinhard onto stain_target (CIELAB
    # mean L, a, b then std L, a, b; the default is the OpenSlide test slide CMU-1-Small-Region's tissue)
    stain_norm: str = "none"
    stain_target: tuple[float, ...] = DEFAULT_TARGET

    def __post_init__(self) -> None:
        from pathways_kg.dataconf import DataConfError, check

        budget.check_patch(self.patch_um, self.patch_px, error=DataConfError)
        check_reading(self.stain_norm, self.stain_target, self.read_mpp, check)

    @cached_property
    def stain(self) -> StainStats | None:
        """The stain target when patches are normalised, else None."""
        return StainStats.of(self.stain_target) if self.stain_norm == "reinhard" else None

    @property
    def stain_spec(self) -> str:
        """What the stain normalisation is, as the feature cache keys it ("" when off)."""
        if self.stain_norm == "none":
            return ""
        return f"|stain={self.stain_norm}:" + ",".join(f"{v:g}" for v in self.stain_target)

    @property
    def target_mpp(self) -> float:
        return self.patch_um / self.patch_px


def check_reading(norm: str, target, read_mpp: float | None, check) -> None:
    """How patches are read, as a config holds it (``stain_norm``, ``stain_target``, ``read_mpp``: the
    fields of :class:`PairingConfig` that histokg train's ``data`` and the bench's ``features`` repeat);
    ``check(ok, field, message)`` raises."""
    check(norm in STAIN_NORMS, "stain_norm", f"must be one of {', '.join(STAIN_NORMS)}, got {norm!r}")
    problem = target_problem(target)
    check(problem is None, "stain_target", problem)
    check(
        read_mpp is None or 0.05 <= read_mpp <= 50,
        "read_mpp",
        f"must be None or a scan resolution in 0.05..50 um/px, got {read_mpp}",
    )


def slide_paths(
    adata: ad.AnnData,
    slides: Mapping[str, str | Path] | None = None,
    *,
    slide_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Slide file per library.

    ``slides`` (library id -> path) wins where given. Otherwise the slide recorded by the reader,
    ``uns["spatial"][lib]["metadata"]["source_image_path"]``; with ``slide_dir``, a file of the
    recorded file's name inside ``slide_dir`` is used instead (slides that moved, or an .h5ad used on
    another machine). A recorded slide that exists nowhere is an error naming the library and path.
    """
    out: dict[str, Path] = {}
    by_name: dict[str, tuple[str, Path]] = {}
    slide_dir = Path(slide_dir) if slide_dir is not None else None
    if slide_dir is not None and not slide_dir.is_dir():
        raise InputError(f"slide folder {slide_dir} does not exist or is not a folder")
    for lib in adata.obs[Key.obs.library_id].astype(str).unique():
        if slides and lib in slides:
            out[lib] = Path(slides[lib])
            continue
        meta = adata.uns.get(Key.uns.spatial, {}).get(lib, {}).get(Key.uns.metadata, {})
        recorded = meta.get(Key.metadata.source_image_path)
        if not recorded:
            raise InputError(
                f"library {lib!r}: no slide given and uns['spatial'][{lib!r}]['metadata']['source_image_path'] is empty"
            )
        recorded = Path(str(recorded))
        if slide_dir is not None:
            moved = slide_dir / recorded.name
            if moved.is_file():
                other = by_name.get(recorded.name)
                if other is not None and other[1] != recorded:
                    raise InputError(
                        f"libraries {other[0]!r} and {lib!r} both record a slide named {recorded.name!r} "
                        f"({other[1]} and {recorded}); --slide-dir {slide_dir} cannot tell them apart: "
                        "give each library its slide explicitly"
                    )
                by_name[recorded.name] = (lib, recorded)
                out[lib] = moved
                continue
            if recorded.is_file():
                out[lib] = recorded
                continue
            raise InputError(
                f"library {lib!r}: slide {recorded} does not exist and {slide_dir} has no file "
                f"named {recorded.name!r}"
            )
        if not recorded.is_file():
            raise InputError(
                f"library {lib!r}: slide {recorded} (recorded in uns['spatial'][{lib!r}]['metadata']"
                "['source_image_path']) does not exist; if the slides moved, pass the folder that now "
                "holds them with --slide-dir (slide_dir=)"
            )
        out[lib] = recorded
    return out


def library_mpp(adata: ad.AnnData, lib: str) -> float:
    """MPP recorded by the reader for a library (used for plain images without their own MPP)."""
    return float(adata.uns[Key.uns.spatial][lib][Key.uns.metadata][Key.metadata.mpp])


def open_library_slide(adata: ad.AnnData, lib: str, path: Path) -> Slide:
    """Open a library's slide with the MPP the reader recorded (the slide's own MPP, when it has one, agrees)."""
    return open_slide(path, mpp=library_mpp(adata, lib))


def pair_spots(
    adata: ad.AnnData,
    cfg: PairingConfig = PairingConfig(),
    slides: Mapping[str, str | Path] | None = None,
    *,
    slide_dir: str | Path | None = None,
) -> ad.AnnData:
    """Flag each spot's patch geometry in ``adata.obs`` and record the pairing in ``uns["histokg"]``.

    Adds ``patch_partial`` (patch crosses the image edge), ``on_tissue_mask`` (spot centre on the
    tissue mask), both flags as :func:`~histokg.st.contract.bool_flag` columns, and
    ``patch_tissue_fraction``. Raises if a spot centre lies outside its image. Slides are found as
    in :func:`slide_paths`; where ``slides`` or ``slide_dir`` point elsewhere than the recorded path,
    ``source_image_path`` is updated to the (absolute) slide used.
    """
    check_spots(adata, "the AnnData given to pair_spots")
    paths = slide_paths(adata, slides, slide_dir=slide_dir)
    partial = np.zeros(adata.n_obs, dtype=bool)
    on_mask = np.zeros(adata.n_obs, dtype=bool)
    fraction = np.zeros(adata.n_obs, dtype=np.float32)
    libs = adata.obs[Key.obs.library_id].astype(str).to_numpy()
    xy_all = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
    for lib, path in paths.items():
        idx = np.flatnonzero(libs == lib)
        xy = xy_all[idx]
        with open_library_slide(adata, lib, path) as slide:
            width, height = slide.dimensions
            check_spots_in_image(
                xy, width, height, list(adata.obs_names[idx]), f"library {lib!r} vs slide {path}"
            )
            half = cfg.patch_um / slide.mpp / 2
            boxes = np.concatenate([xy - half, xy + half], axis=1)
            partial[idx] = (
                (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
            )
            mask = detect_tissue(slide, cfg.mask, allow_empty=True)
            on_mask[idx] = mask.contains(xy)
            fraction[idx] = mask.fraction_in_boxes(boxes)
            _check_spots_meet_tissue(lib, path, mask, on_mask[idx], xy, list(adata.obs_names[idx]))
        if Key.obs.in_tissue in adata.obs and not adata.obs[Key.obs.in_tissue].to_numpy(bool)[idx].any():
            log.warning(
                "%s: none of its %d spots is marked as under tissue (obs['in_tissue'] is False for all); "
                "training with data.in_tissue_only (the default) would drop them all",
                lib,
                len(idx),
            )
        log.info(
            "%s: %d spots paired, %d patches padded at the image edge, %d spots off the tissue mask",
            lib,
            len(idx),
            int(partial[idx].sum()),
            int((~on_mask[idx]).sum()),
        )
    adata.obs[Key.obs.patch_partial] = bool_flag(partial)
    adata.obs[Key.obs.on_tissue_mask] = bool_flag(on_mask)
    adata.obs[Key.obs.patch_tissue_fraction] = fraction
    for lib, path in paths.items():
        meta = adata.uns[Key.uns.spatial][lib].setdefault(Key.uns.metadata, {})
        resolved = str(path.resolve())
        recorded = meta.get(Key.metadata.source_image_path)
        if recorded != resolved:
            log.info("%s: slide now recorded as %s (was %s)", lib, resolved, recorded)
            meta[Key.metadata.source_image_path] = resolved
    params = adata.uns.setdefault(Key.uns.histokg, {})
    params[Key.histokg.pairing] = {
        **asdict(cfg),
        "mask": asdict(cfg.mask),
        "stain_target": list(cfg.stain_target),
        "target_mpp": cfg.target_mpp,
        "slides": {k: str(v.resolve()) for k, v in paths.items()},
    }
    return adata


def _check_spots_meet_tissue(lib, path, mask, on_mask: np.ndarray, xy: np.ndarray, ids: list[str]) -> None:
    """No spot on a tissue mask that found tissue: the spots and the slide are not of one section."""
    if on_mask.any():
        return
    if not mask.mask.any():
        log.warning(
            "%s: the tissue mask of slide %s is empty (nothing more saturated than %.3f); every spot is "
            "flagged off the mask (on_tissue_mask False): is it a faint, non-H&E or blank image?",
            lib,
            path,
            mask.threshold,
        )
        return
    raise InputError(
        f"library {lib!r} vs slide {path}: none of the {len(ids)} spots lies on the slide's tissue mask "
        f"(e.g. spot {ids[0]!r} at x={xy[0, 0]:.1f}, y={xy[0, 1]:.1f}); are the spot table and the slide "
        "from the same section, at the same resolution and orientation?"
    )


SPOT_COLOURS = {"ok": (20, 170, 60), "partial": (240, 140, 0), "off_tissue": (220, 30, 30)}


def spots_overlay(
    adata: ad.AnnData,
    lib: str,
    max_side: int = 1600,
    slides: Mapping[str, str | Path] | None = None,
    *,
    slide_dir: str | Path | None = None,
) -> np.ndarray:
    """Thumbnail of a library's slide with its spots drawn at their true size.

    Green: full patch on tissue; orange: patch padded at the image edge; red: spot off the tissue
    mask or not under tissue according to the reader.
    """
    check_spots(adata, "the AnnData given to spots_overlay")
    sel = (adata.obs[Key.obs.library_id].astype(str) == lib).to_numpy()
    path = slide_paths(adata[sel], slides, slide_dir=slide_dir)[lib]
    obs = adata.obs.loc[sel]
    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=float)[sel]
    colours = np.tile(np.array(SPOT_COLOURS["ok"]), (len(xy), 1))
    if Key.obs.patch_partial in obs:
        colours[obs[Key.obs.patch_partial].to_numpy(bool)] = SPOT_COLOURS["partial"]
    off = ~obs[Key.obs.in_tissue].to_numpy(bool)
    if Key.obs.on_tissue_mask in obs:
        off |= ~obs[Key.obs.on_tissue_mask].to_numpy(bool)
    colours[off] = SPOT_COLOURS["off_tissue"]
    scalefactors = adata.uns[Key.uns.spatial][lib][Key.uns.scalefactors]
    radius = float(scalefactors[Key.scalefactors.spot_diameter_fullres]) / 2
    with open_library_slide(adata, lib, path) as slide:
        thumb, scale = slide.thumbnail(max_side)
    return draw_overlay(thumb, scale, circles=xy, radius0=radius, colors=colours)
