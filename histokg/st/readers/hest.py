"""HEST-1k style pairs: an ``.h5ad`` of spot counts plus the pyramidal TIFF its coordinates refer to.

Spot centres come from ``obsm["spatial"]`` (full-resolution pixels) or from the columns
``pxl_col_in_fullres``/``pxl_row_in_fullres``; the MPP from the argument, a HEST metadata JSON
(``pixel_size_um_estimated`` / ``pixel_size_um_embedded``) or the slide's metadata.

HEST-1k holds several technologies (Visium, legacy ST, Visium HD, Xenium pseudo-spots), so the spot
diameter is not assumed: it comes from the argument, the metadata JSON's ``spot_diameter`` (um), the
h5ad's own ``uns["spatial"][...]["scalefactors"]["spot_diameter_fullres"]``, or the measured spot
pitch when it is that of a known array (Visium: 100 um pitch, 55 um spots; legacy ST: 200 um, 100 um).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg.errors import InputError
from histokg.keys import Key
from histokg.st.contract import read_h5ad
from histokg.st.reader import Input, Reader, Spots
from histokg.st.readers.legacy import pitch_pixels

log = logging.getLogger(__name__)

HEST_MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
# Known arrays: centre-to-centre pitch (um) -> (technology, spot diameter in um).
KNOWN_ARRAYS = {100.0: ("Visium", 55.0), 200.0: ("legacy ST", 100.0)}
PITCH_TOLERANCE = 0.15


class HESTReader(Reader):
    """HEST-1k style .h5ad + the slide its spot coordinates refer to."""

    name = "hest"
    platform_mpp_checked = False  # HEST's estimated pixel size corrects wrong embedded ones
    slide_error_hint = "for HEST data pass mpp or the sample's metadata JSON"
    library_id_help = "Slide id (default: h5ad file name)."
    mpp_help = "Microns per pixel, when the slide has none."
    inputs = (
        Input("h5ad", "file", "HEST .h5ad of spot counts (coordinates in obsm['spatial'])."),
        Input("slide", "file", "The slide the spot coordinates refer to."),
        Input("metadata_json", "file", "HEST metadata JSON.", flag="--metadata"),
        Input(
            Key.metadata.spot_diameter_um,  # the parameter that sets this metadata field
            "float",
            "Spot diameter in um (default: the metadata's spot_diameter, the h5ad's "
            "spot_diameter_fullres, or the spot pitch of a known array).",
            flag="--spot-diameter",
        ),
    )

    def __init__(
        self,
        h5ad: str | Path,
        slide: str | Path,
        *,
        library_id: str | None = None,
        mpp: float | None = None,
        metadata_json: str | Path | None = None,
        spot_diameter_um: float | None = None,
    ) -> None:
        self.h5ad = Path(h5ad)
        super().__init__(slide=slide, library_id=library_id or self.h5ad.stem, mpp=mpp)
        self.metadata_json = Path(metadata_json) if metadata_json is not None else None
        if spot_diameter_um is not None and not float(spot_diameter_um) > 0:
            raise InputError(
                f"spot_diameter_um: must be a positive number of microns, got {spot_diameter_um!r}"
            )
        self.spot_diameter_um = spot_diameter_um
        self._meta: dict = {}

    def load(self) -> Spots:
        src = read_h5ad(self.h5ad)
        if Key.obsm.spatial in src.obsm:
            xy = _numbers(src.obsm[Key.obsm.spatial], f"h5ad file {self.h5ad}: obsm['spatial']")
            if xy.ndim != 2 or xy.shape[1] < 2:
                raise InputError(
                    f"h5ad file {self.h5ad}: obsm['spatial'] must be an (n_spots, 2) array of (x, y) pixels, "
                    f"got shape {xy.shape}"
                )
            xy = xy[:, :2]
        elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(src.obs.columns):
            xy = _numbers(
                src.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]],
                f"h5ad file {self.h5ad}: obs pxl_col_in_fullres/pxl_row_in_fullres",
            )
        else:
            raise InputError(
                f"h5ad file {self.h5ad}: no obsm['spatial'] and no obs pxl_col_in_fullres/pxl_row_in_fullres"
            )
        if self.metadata_json is not None:
            self._meta = _read_metadata(self.metadata_json)
        counts = src.layers[Key.layers.counts] if Key.layers.counts in src.layers else src.X
        own = (Key.obs.in_tissue, Key.obs.library_id, Key.obs.barcode)  # build_anndata sets these
        extra = src.obs.drop(columns=[c for c in own if c in src.obs], errors="ignore")
        diameter_um, diameter_px, diameter_source = self._recorded_spot_diameter(src)
        obs, var = src.obs, src.var
        gene_ids = var[Key.var.gene_ids].astype(str).to_list() if Key.var.gene_ids in var else None
        in_tissue = obs[Key.obs.in_tissue].to_numpy().astype(bool) if Key.obs.in_tissue in obs else None
        return Spots(
            counts=sp.csr_matrix(counts),
            barcodes=src.obs_names,
            genes=src.var_names,
            xy=xy,
            source=str(self.h5ad),
            positions=str(self.h5ad),
            spot_diameter_um=diameter_um,
            spot_diameter_fullres=diameter_px,
            spot_diameter_source=diameter_source,
            gene_ids=gene_ids,
            in_tissue=in_tissue,
            obs_extra=pd.DataFrame({c: extra[c].to_numpy() for c in extra.columns}),
            extra_metadata={Key.metadata.source_path: str(self.h5ad.resolve())},
        )

    def platform_mpp(self, spots: Spots) -> tuple[float, str] | None:
        """The HEST metadata JSON's pixel size (estimated before embedded), when given."""
        if self.metadata_json is None:
            return None
        key = next((k for k in HEST_MPP_KEYS if self._meta.get(k)), None)
        if key is None:
            raise InputError(f"{self.metadata_json}: none of {HEST_MPP_KEYS} is set")
        return _number(self._meta[key], f"{self.metadata_json}: {key}"), f"HEST metadata {key}"

    def _recorded_spot_diameter(self, src: ad.AnnData) -> tuple[float | None, float | None, str]:
        """(um, px, source) from the argument, the metadata JSON or the h5ad; (None, None, "") if none."""
        if self.spot_diameter_um is not None:
            return float(self.spot_diameter_um), None, "given"
        if self._meta.get("spot_diameter"):
            return (
                _number(self._meta["spot_diameter"], f"{self.metadata_json}: spot_diameter"),
                None,
                f"HEST metadata spot_diameter ({self.metadata_json})",
            )
        for lib, entry in (src.uns.get(Key.uns.spatial) or {}).items():
            value = (
                (entry.get(Key.uns.scalefactors) or {}).get(Key.scalefactors.spot_diameter_fullres)
                if isinstance(entry, dict)
                else None
            )
            if value is not None and not (isinstance(value, int | float) and value == 0):
                field = f"h5ad uns['spatial'][{lib!r}]['scalefactors']['spot_diameter_fullres']"
                return None, _number(value, f"h5ad file {self.h5ad}: {field.removeprefix('h5ad ')}"), field
        return None, None, ""

    def resolve_spot_diameter(self, spots: Spots, mpp: float) -> tuple[float, str]:
        """As recorded; otherwise from the spot pitch of a known array (Visium, legacy ST)."""
        if spots.spot_diameter_um is not None or spots.spot_diameter_fullres is not None:
            return super().resolve_spot_diameter(spots, mpp)
        pitch_um = pitch_pixels(np.asarray(spots.xy), f"h5ad file {self.h5ad}") * mpp
        for array_pitch, (technology, diameter) in KNOWN_ARRAYS.items():
            if abs(pitch_um / array_pitch - 1) <= PITCH_TOLERANCE:
                log.info(
                    "%s: spot pitch %.1f um is %s's %g um: spots of %g um",
                    self.library_id,
                    pitch_um,
                    technology,
                    array_pitch,
                    diameter,
                )
                return diameter / mpp, f"spot pitch {pitch_um:.1f} um ({technology}: {diameter:g} um spots)"
        raise InputError(
            f"h5ad file {self.h5ad}: the spot diameter is not recorded (no spot_diameter in a metadata JSON, "
            f"no spot_diameter_fullres in uns['spatial']) and the spot pitch, {pitch_um:.1f} um, is not that of "
            "a known array (Visium 100 um, legacy ST 200 um); pass spot_diameter_um (--spot-diameter)"
        )


def _number(value, where: str) -> float:
    """``value`` as a float; a value that is not a number is an :class:`InputError` naming ``where``."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected a number, got {value!r}") from None


def _numbers(values, where: str) -> np.ndarray:
    """``values`` as a float array; values that are not numbers are an :class:`InputError` naming ``where``."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: expected numbers ({exc})") from None


def _read_metadata(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"HEST metadata {path}: cannot be read as JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"HEST metadata {path}: expected a JSON object")
    return meta


read_hest = HESTReader.as_function("read_hest")
