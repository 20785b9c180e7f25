"""Legacy Spatial Transcriptomics (Stahl et al. 2016 arrays): counts TSV + spot table + H&E image.

The layout of e.g. the HER2+ breast cancer (Andersson et al. 2021) and mouse olfactory bulb data:
- counts: spots x genes TSV (optionally gzipped), first column the spot id ``"<x>x<y>"`` (array coords);
- spot table: columns ``x y new_x new_y pixel_x pixel_y selected`` (ST Spot Detector output), where
  ``pixel_x``/``pixel_y`` are full-resolution image pixels and ``selected == 1`` marks spots under tissue;
- image: the full-resolution H&E (usually a plain JPEG without MPP).
Legacy ST spots are 100 um wide on a 200 um centre-to-centre grid; the MPP is derived from the
measured spot pitch unless given.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from histokg.errors import InputError
from histokg.keys import Key
from histokg.st.reader import Input, Reader, Spots

log = logging.getLogger(__name__)

LEGACY_PITCH_UM = 200.0
LEGACY_SPOT_DIAMETER_UM = 100.0
SPOT_TABLE_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


def read_counts_table(path: str | Path) -> pd.DataFrame:
    """Spots x genes count table with spot ids as index; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"counts file {path} does not exist")
    try:
        # The header as written: pandas would rename a repeated gene GENE to GENE.1 (and a gene
        # really named GENE.1, e.g. a versioned Ensembl id, is indistinguishable from that).
        header = pd.read_csv(path, sep="\t", header=None, nrows=1, dtype=str, keep_default_na=False)
        table = pd.read_csv(path, sep="\t", index_col=0)
    except (ValueError, OSError, pd.errors.ParserError, EOFError) as exc:
        raise InputError(f"counts file {path}: cannot be parsed as a tab-separated table ({exc})") from None
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise InputError(f"counts file {path}: no genes or no spots (shape {table.shape})")
    names = [str(v) for v in header.iloc[0].tolist()]
    if len(names) == table.shape[1] + 1:
        names = names[1:]  # the spot-id column's header cell
    if len(names) != table.shape[1]:
        raise InputError(
            f"counts file {path}: the header has {len(names)} fields but the rows have {table.shape[1]} "
            "gene columns"
        )
    empty = [i + 2 for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise InputError(f"counts file {path}: empty gene name in header column(s) {empty[:3]}")
    table.columns = pd.Index(names)
    table.index = table.index.astype(str)
    if not table.index.is_unique:
        raise InputError(
            f"counts file {path}: duplicate spot ids, e.g. {table.index[table.index.duplicated()][0]!r}"
        )
    non_numeric = [
        table.columns[i] for i in range(table.shape[1]) if not pd.api.types.is_numeric_dtype(table.iloc[:, i])
    ]
    if non_numeric:
        raise InputError(f"counts file {path}: non-numeric values in gene column(s) {non_numeric[:3]}")
    values = table.to_numpy()
    if (values < 0).any() or not np.isfinite(values).all():
        raise InputError(f"counts file {path}: counts must be finite and non-negative")
    return table


def read_spot_table(path: str | Path) -> pd.DataFrame:
    """ST Spot Detector table indexed by ``"<x>x<y>"``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spot table {path} does not exist")
    try:
        table = pd.read_csv(path, sep="\t")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"spot table {path}: cannot be parsed as a tab-separated table ({exc})") from None
    missing = [c for c in SPOT_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"spot table {path}: missing columns {missing}; found {list(table.columns)}")
    for col in SPOT_TABLE_COLUMNS:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise InputError(f"spot table {path}: column {col!r} must be numeric")
    bad = ~np.isfinite(table[list(SPOT_TABLE_COLUMNS)].to_numpy(np.float64)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        examples = "; ".join(
            ", ".join(f"{c}={table[c].iloc[i]}" for c in SPOT_TABLE_COLUMNS) for i in rows[:2]
        )
        raise InputError(
            f"spot table {path}: {len(rows)} of {len(table)} rows have empty, NaN or infinite x, y, pixel_x "
            f"or pixel_y (e.g. line {rows[0] + 2}: {examples}); fix or drop those rows"
        )
    ids = table["x"].round().astype(int).astype(str) + "x" + table["y"].round().astype(int).astype(str)
    table.index = pd.Index(ids, name="spot")
    if not table.index.is_unique:
        raise InputError(
            f"spot table {path}: duplicate spot ids, e.g. {table.index[table.index.duplicated()][0]!r}"
        )
    if "selected" not in table.columns:
        table["selected"] = 1
    return table


def pitch_pixels(xy: np.ndarray, where: str = "spot centres") -> float:
    """Median nearest-neighbour distance between spot centres, in pixels (``where`` names them in errors)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        raise InputError(f"{where}: cannot measure the spot pitch from fewer than two spots")
    if not np.isfinite(xy).all():
        raise InputError(f"{where}: spot centres hold NaN or infinite values; cannot measure the spot pitch")
    dist, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(dist[:, 1]))
    if pitch <= 0:
        shared = int((dist[:, 1] == 0).sum())
        raise InputError(
            f"{where}: {shared} of {len(xy)} spots share their position with another spot (e.g. all at "
            f"x={xy[0, 0]:.6g}, y={xy[0, 1]:.6g}); the spot pitch, and so the microns per pixel, cannot be "
            "measured: are pixel_x and pixel_y the spots' own pixel positions?"
        )
    return pitch


class LegacySTReader(Reader):
    """Legacy ST arrays (Stahl 2016): counts TSV, ST Spot Detector table, full-resolution H&E image.

    ``image`` is the full-resolution H&E (plain JPEG/PNG or any slide OpenSlide reads). Its MPP is
    taken, in order, from ``mpp``, from the slide's metadata, or from the spot pitch (``pitch_um``).
    """

    name = "legacy"
    synonyms = ("legacy_st", "st")
    inputs = (
        Input("counts", "file", "Spots x genes counts TSV (optionally gzipped), spot ids '<x>x<y>'."),
        Input("spots", "file", "ST Spot Detector table (x y pixel_x pixel_y [selected])."),
        Input("image", "file", "Full-resolution H&E image."),
    )
    image_label = "image"
    library_id_help = "Slide id (default: counts file name)."
    mpp_help = "Microns per pixel (default: from the 200 um spot pitch)."

    def __init__(
        self,
        counts: str | Path,
        spots: str | Path,
        image: str | Path,
        *,
        library_id: str | None = None,
        mpp: float | None = None,
        pitch_um: float = LEGACY_PITCH_UM,
        spot_diameter_um: float = LEGACY_SPOT_DIAMETER_UM,
        min_match: float = 0.9,
        hires_max_px: int = 2000,
    ) -> None:
        self.counts_path, self.spots_path = Path(counts), Path(spots)
        super().__init__(slide=image, library_id=library_id or self.counts_path.name.split(".")[0], mpp=mpp)
        self.pitch_um = pitch_um
        self.spot_diameter_um = spot_diameter_um
        self.min_match = min_match
        self.hires_max_px = hires_max_px

    def load(self) -> Spots:
        table = read_counts_table(self.counts_path)
        spot_table = read_spot_table(self.spots_path)
        found = self.match(table.index, spot_table.index, str(self.counts_path), str(self.spots_path))
        table = table.loc[found]
        spot_rows = spot_table.loc[table.index]
        self.measured_pitch = pitch_pixels(
            spot_table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64), f"spot table {self.spots_path}"
        )
        return Spots(
            counts=sp.csr_matrix(table.to_numpy()),
            barcodes=table.index,
            genes=table.columns,
            xy=spot_rows[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64),
            source=str(self.counts_path),
            positions=str(self.spots_path),
            spot_diameter_um=self.spot_diameter_um,
            spot_diameter_source=f"legacy ST spot ({self.spot_diameter_um:g} um)",
            in_tissue=spot_rows["selected"].to_numpy() == 1,
            obs_extra=pd.DataFrame(
                {Key.obs.array_x: spot_rows["x"].to_numpy(), Key.obs.array_y: spot_rows["y"].to_numpy()}
            ),
            extra_metadata={"pitch_px": self.measured_pitch},
        )

    def fallback_mpp(self, spots: Spots) -> tuple[float, str]:
        """An image without MPP metadata (the usual JPEG): from the measured spot pitch."""
        mpp = self.pitch_um / self.measured_pitch
        log.info("%s: MPP %.4f derived from the spot pitch", self.library_id, mpp)
        return mpp, f"spot pitch ({self.pitch_um:g} um = {self.measured_pitch:.1f} px)"


read_legacy_st = LegacySTReader.as_function("read_legacy_st")
