"""10x Xenium (Xenium Onboard Analysis / Xenium Ranger output): transcripts binned into square pseudo-spots.

Read from the output folder:
- ``experiment.xenium`` (JSON): ``pixel_size``, the microns per pixel of the morphology image (0.2125);
- ``transcripts.parquet``: one row per decoded transcript, ``x_location``/``y_location`` in microns
  of the morphology image's frame, ``feature_name``, ``qv`` (Phred-scaled quality; 10x counts
  ``qv >= 20`` as high quality); control probes and codewords (``NegControl*``, ``BLANK_*``,
  ``UnassignedCodeword_*``, ..., or ``is_gene == False``) are dropped;
- ``cells.parquet`` (optional): cell centroids ``x_centroid``/``y_centroid`` (microns), counted per
  pseudo-spot (``obs["n_cells"]``; a pseudo-spot holding a cell is ``in_tissue``);
- ``cell_feature_matrix.h5`` (optional): the panel's Ensembl ids for ``var["gene_ids"]``.

The transcripts are counted on a square grid of ``spot_um`` (e.g. 55 or 100 um, as HEST's
pseudo-Visium) anchored at the origin of the Xenium frame. The slide is the image the user names: the
H&E (post-Xenium) or a morphology image that OpenSlide reads. An optional alignment CSV is the 3x3
affine matrix Xenium Explorer exports, mapping the slide's pixels to morphology-image pixels
(``[x', y', 1] = M [x, y, 1]``); without it the slide is taken to be in the morphology image's
pixels. Pseudo-spot centres become slide pixels through ``M^-1``; the slide's MPP is ``pixel_size``
times the matrix's scale.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm.auto import tqdm

from histokg.errors import InputError
from histokg.io import read_json_object
from histokg.keys import Key
from histokg.st.reader import Input, Reader, Spots

log = logging.getLogger(__name__)

TRANSCRIPT_COLUMNS = ("x_location", "y_location", "feature_name", "qv")
CELL_COLUMNS = ("x_centroid", "y_centroid")
CONTROL_PREFIXES = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "BLANK_",
    "UnassignedCodeword_",
    "DeprecatedCodeword_",
    "Intergenic_",
    "antisense_",
)
DEFAULT_SPOT_UM = 100.0
DEFAULT_MIN_QV = 20.0
BATCH_ROWS = 2_000_000


def read_alignment(path: str | Path) -> np.ndarray:
    """The 3x3 affine matrix of a Xenium Explorer alignment CSV (slide pixels -> morphology pixels)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"alignment file {path} does not exist")
    expected = "a 3x3 affine matrix (3 lines of 3 comma-separated numbers, as Xenium Explorer exports)"
    try:
        matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"alignment file {path}: expected {expected}; {reason}") from None
    if matrix.shape != (3, 3):
        raise InputError(
            f"alignment file {path}: expected {expected}, got {matrix.shape[0]}x{matrix.shape[1]}"
        )
    if not np.isfinite(matrix).all():
        raise InputError(f"alignment file {path}: the matrix holds non-finite values")
    if not np.allclose(matrix[2], [0, 0, 1], atol=1e-9):
        raise InputError(
            f"alignment file {path}: the last row of an affine matrix is 0, 0, 1; got {matrix[2].tolist()}"
        )
    if abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise InputError(
            f"alignment file {path}: the matrix is singular (it maps the slide onto a line or a point)"
        )
    return matrix


class XeniumReader(Reader):
    """10x Xenium: qv-filtered transcripts binned into square pseudo-spots on the H&E or morphology image."""

    name = "xenium"
    library_id_help = "Slide id (default: the Xenium output folder's name)."
    mpp_help = (
        "Microns per pixel of the slide (default: experiment.xenium pixel_size and the alignment's scale)."
    )
    mpp_mismatch_hint = ", with the alignment matrix that maps it onto the Xenium morphology image"
    inputs = (
        Input("path", "dir", "Xenium output folder (experiment.xenium, transcripts.parquet)."),
        Input("slide", "file", "The H&E (or morphology) image the spots are placed on."),
        Input("spot_um", "float", "Side of the square pseudo-spots in um (e.g. 55 or 100)."),
        Input("min_qv", "float", "Keep transcripts with qv at least this (10x: Q20 = high quality)."),
        Input(
            "alignment",
            "file",
            "Xenium Explorer alignment CSV: 3x3 affine matrix, slide px -> morphology px "
            "(default: the slide is in morphology-image pixels).",
        ),
    )

    def __init__(
        self,
        path: str | Path,
        *,
        slide: str | Path,
        spot_um: float = DEFAULT_SPOT_UM,
        min_qv: float = DEFAULT_MIN_QV,
        alignment: str | Path | None = None,
        library_id: str | None = None,
        mpp: float | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"Xenium folder {path} does not exist or is not a folder")
        super().__init__(slide=slide, library_id=library_id or path.name, mpp=mpp)
        if not (math.isfinite(float(spot_um)) and float(spot_um) > 0):
            raise InputError(
                f"spot_um: the pseudo-spot side must be a positive number of microns, got {spot_um!r}"
            )
        if not (math.isfinite(float(min_qv)) and float(min_qv) >= 0):
            raise InputError(f"min_qv: must be a number >= 0, got {min_qv!r}")
        self.path = path
        self.spot_um = float(spot_um)
        self.min_qv = float(min_qv)
        self.alignment = Path(alignment) if alignment is not None else None

    # -- files ------------------------------------------------------------------------------------
    def load(self) -> Spots:
        self.pixel_size = self._pixel_size()
        self.matrix = read_alignment(self.alignment) if self.alignment is not None else np.eye(3)
        rows, cols, genes, counts, stats = self._bin_transcripts()
        centres_um = np.column_stack([(cols + 0.5) * self.spot_um, (rows + 0.5) * self.spot_um])
        xy = self.to_slide_pixels(centres_um)
        n_cells = self._cells_per_spot(rows, cols)
        barcodes = [f"s_{self.spot_um:g}um_{r:05d}_{c:05d}" for r, c in zip(rows, cols, strict=True)]
        obs = pd.DataFrame({Key.obs.array_row: rows, Key.obs.array_col: cols})
        if n_cells is not None:
            obs[Key.obs.n_cells] = n_cells
        log.info(
            "%s: %d transcripts (qv >= %g) in %d pseudo-spots of %g um; dropped %d below qv, %d control",
            self.library_id,
            stats["kept"],
            self.min_qv,
            len(rows),
            self.spot_um,
            stats["low_qv"],
            stats["control"],
        )
        return Spots(
            counts=counts,
            barcodes=barcodes,
            genes=genes,
            xy=xy,
            source=str(self.path / "transcripts.parquet"),
            positions=str(self.path / "transcripts.parquet"),
            spot_diameter_um=self.spot_um,
            spot_diameter_source=f"pseudo-spot side ({self.spot_um:g} um square grid)",
            gene_ids=self._gene_ids(genes),
            in_tissue=None if n_cells is None else n_cells > 0,
            obs_extra=obs,
            extra_metadata={
                Key.metadata.source_path: str(self.path.resolve()),
                Key.metadata.spot_shape: "square",
                "xenium_pixel_size": self.pixel_size,
                "min_qv": self.min_qv,
                "alignment": str(self.alignment.resolve()) if self.alignment is not None else "",
                "n_transcripts": stats["kept"],
                "n_transcripts_low_qv": stats["low_qv"],
                "n_transcripts_control": stats["control"],
            },
        )

    def platform_mpp(self, spots: Spots) -> tuple[float, str]:
        scale = math.sqrt(abs(np.linalg.det(self.matrix[:2, :2])))
        source = f"{self.path / 'experiment.xenium'} pixel_size ({self.pixel_size:g} um)"
        if self.alignment is not None:
            source += f" x the alignment's scale ({scale:.4g} morphology px per slide px)"
        return self.pixel_size * scale, source

    def to_slide_pixels(self, xy_um: np.ndarray) -> np.ndarray:
        """Xenium microns -> morphology pixels -> slide level-0 pixels (through the inverse alignment)."""
        morph = np.asarray(xy_um, dtype=np.float64) / self.pixel_size
        homogeneous = np.column_stack([morph, np.ones(len(morph))])
        return (homogeneous @ np.linalg.inv(self.matrix).T)[:, :2]

    def _pixel_size(self) -> float:
        file = self.path / "experiment.xenium"
        if not file.is_file():
            raise InputError(
                f"{self.path}: no experiment.xenium; expected a Xenium output folder "
                "(experiment.xenium, transcripts.parquet, cells.parquet, ...)"
            )
        experiment = read_json_object(file, InputError)
        if "pixel_size" not in experiment:
            raise InputError(
                f"{file}: field 'pixel_size' is missing (microns per morphology-image pixel, 0.2125)"
            )
        value = experiment["pixel_size"]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 < value <= 10:
            raise InputError(
                f"{file}: pixel_size must be a positive number of microns per pixel (Xenium: 0.2125), got {value!r}"
            )
        return float(value)

    def _bin_transcripts(self) -> tuple[np.ndarray, np.ndarray, list[str], sp.csr_matrix, dict[str, int]]:
        """(row, col) of each non-empty pseudo-spot, genes, spots x genes counts, transcript tallies."""
        file = self.path / "transcripts.parquet"
        if not file.is_file():
            raise InputError(f"{self.path}: no transcripts.parquet (the Xenium transcripts table)")
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: not a readable Parquet file ({exc})") from None
        found = pf.schema_arrow.names
        missing = [c for c in TRANSCRIPT_COLUMNS if c not in found]
        if missing:
            raise InputError(
                f"{file}: missing column(s) {missing}; a Xenium transcripts table has x_location, y_location "
                f"(microns), feature_name and qv; found {found}"
            )
        columns = [*TRANSCRIPT_COLUMNS, *(["is_gene"] if "is_gene" in found else [])]
        gene_index: dict[str, int] = {}
        parts: list[pd.DataFrame] = []
        stats = {"read": 0, "low_qv": 0, "control": 0, "kept": 0}
        batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        n_batches = math.ceil(pf.metadata.num_rows / BATCH_ROWS)
        progress = tqdm(batches, total=n_batches, desc="transcripts", unit="batch", disable=n_batches <= 1)
        for batch in progress:
            part = self._bin_batch(batch, gene_index, stats, file)
            if part is not None:
                parts.append(part)
        if not parts:
            raise InputError(
                f"{file}: no transcripts left with qv >= {self.min_qv:g} ({stats['read']} read, {stats['low_qv']} "
                f"below qv, {stats['control']} control probes or codewords)"
            )
        table = pd.concat(parts).groupby(["row", "col", "gene"], sort=False)["n"].sum().reset_index()
        spots = table[["row", "col"]].drop_duplicates().sort_values(["row", "col"]).reset_index(drop=True)
        spot_of = pd.MultiIndex.from_frame(spots).get_indexer(pd.MultiIndex.from_frame(table[["row", "col"]]))
        names = np.array(list(gene_index), dtype=object)
        order = np.argsort(names)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        counts = sp.coo_matrix(
            (table["n"].to_numpy(np.int64), (spot_of, rank[table["gene"].to_numpy()])),
            shape=(len(spots), len(names)),
        ).tocsr()
        rows, cols = spots["row"].to_numpy(np.int64), spots["col"].to_numpy(np.int64)
        return rows, cols, [str(n) for n in names[order]], counts, stats

    def _bin_batch(
        self, batch: pa.RecordBatch, gene_index: dict[str, int], stats: dict[str, int], file: Path
    ):
        names = batch.column("feature_name")
        if pa.types.is_binary(names.type) or pa.types.is_large_binary(names.type):
            names = names.cast(pa.string())  # older Xenium versions write the names as bytes
        frame = pd.DataFrame(
            {
                "x": batch.column("x_location").to_numpy(zero_copy_only=False),
                "y": batch.column("y_location").to_numpy(zero_copy_only=False),
                "qv": batch.column("qv").to_numpy(zero_copy_only=False),
                "name": names.to_pandas(),
            }
        )
        stats["read"] += len(frame)
        for col in ("x", "y", "qv"):
            if not pd.api.types.is_numeric_dtype(frame[col]):
                raise InputError(
                    f"{file}: column {dict(x='x_location', y='y_location', qv='qv')[col]!r} must be numeric"
                )
        control = frame["name"].astype(str).str.startswith(CONTROL_PREFIXES).to_numpy()
        if "is_gene" in batch.schema.names:
            control |= ~batch.column("is_gene").to_numpy(zero_copy_only=False).astype(bool)
        low_qv = ~(frame["qv"].to_numpy(np.float64) >= self.min_qv)
        stats["control"] += int(control.sum())
        stats["low_qv"] += int((low_qv & ~control).sum())
        frame = frame[~(control | low_qv)]
        if not np.isfinite(frame[["x", "y"]].to_numpy(np.float64)).all():
            raise InputError(f"{file}: x_location/y_location hold non-finite values")
        stats["kept"] += len(frame)
        if frame.empty:
            return None
        codes, uniques = pd.factorize(frame["name"].astype(str))
        glob = np.array([gene_index.setdefault(u, len(gene_index)) for u in uniques], dtype=np.int64)
        keys = pd.DataFrame(
            {
                "row": np.floor(frame["y"].to_numpy(np.float64) / self.spot_um).astype(np.int64),
                "col": np.floor(frame["x"].to_numpy(np.float64) / self.spot_um).astype(np.int64),
                "gene": glob[codes],
            }
        )
        return keys.groupby(["row", "col", "gene"], sort=False).size().rename("n").reset_index()

    def _cells_per_spot(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
        """Cell centroids (cells.parquet) per pseudo-spot, or None without a cells table."""
        file = self.path / "cells.parquet"
        if not file.is_file():
            log.info(
                "%s: no cells.parquet; every pseudo-spot with transcripts counts as in tissue", self.path
            )
            return None
        try:
            found = pq.ParquetFile(file).schema_arrow.names
            missing = [c for c in CELL_COLUMNS if c not in found]
            if missing:
                raise InputError(
                    f"{file}: missing column(s) {missing} (cell centroids in microns); found {found}"
                )
            cells = pd.read_parquet(file, columns=list(CELL_COLUMNS))
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: not a readable Parquet file ({exc})") from None
        cell_rows = np.floor(cells["y_centroid"].to_numpy(np.float64) / self.spot_um).astype(np.int64)
        cell_cols = np.floor(cells["x_centroid"].to_numpy(np.float64) / self.spot_um).astype(np.int64)
        per_spot = (
            pd.Series(1, index=pd.MultiIndex.from_arrays([cell_rows, cell_cols])).groupby(level=[0, 1]).sum()
        )
        index = pd.MultiIndex.from_arrays([rows, cols])
        return per_spot.reindex(index, fill_value=0).to_numpy(np.int64)

    def _gene_ids(self, genes: list[str]) -> list[str]:
        """Ensembl ids from cell_feature_matrix.h5 where it lists the gene; the name otherwise."""
        file = self.path / "cell_feature_matrix.h5"
        if not file.is_file():
            return list(genes)
        try:
            with h5py.File(file, "r") as f:
                names = [n.decode() for n in f["matrix/features/name"][:]]
                ids = [i.decode() for i in f["matrix/features/id"][:]]
        except (OSError, KeyError) as exc:
            raise InputError(f"{file}: not a readable 10x feature-barcode matrix ({exc})") from None
        lookup = dict(zip(names, ids, strict=True))
        return [lookup.get(g, g) for g in genes]


read_xenium = XeniumReader.as_function("read_xenium")
