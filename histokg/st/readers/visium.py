"""10x Visium / Space Ranger outputs: reader into the AnnData contract, and a writer for synthetic data.

Reads the ``outs`` folder of Space Ranger 1.x-3.x:
``filtered_feature_bc_matrix.h5`` (or the ``filtered_feature_bc_matrix/`` mtx folder),
``spatial/tissue_positions_list.csv`` (v1, no header), ``spatial/tissue_positions.csv`` (v2, header)
or ``spatial/tissue_positions.parquet`` (v3), ``spatial/scalefactors_json.json`` and the hires/lowres
PNGs. The full-resolution image, when given, is opened as a slide; its MPP wins, otherwise the MPP is
derived from the spot diameter (Visium spots are 55 um across).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from PIL import Image

from histokg.errors import InputError
from histokg.io import atomic_open, atomic_path, read_json_object, write_json
from histokg.keys import Key
from histokg.st.contract import check_spots_in_image
from histokg.st.reader import Input, Reader, SlideView, Spots

log = logging.getLogger(__name__)

VISIUM_SPOT_DIAMETER_UM = 55.0
# Space Ranger's columns; scanpy keeps the first four under these names in obs, and so do we.
POSITION_COLUMNS = [
    Key.obs.barcode,
    Key.obs.in_tissue,
    Key.obs.array_row,
    Key.obs.array_col,
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


class VisiumReader(Reader):
    """10x Visium / Space Ranger outs folder: positions v1/v2/v3, .h5 or mtx matrix, 55 um spots.

    ``slide`` is the full-resolution image the spot pixel coordinates refer to (pyramidal TIFF, SVS,
    or a plain .jpg/.png with ``mpp``); without it the folder's hires image is used. ``library_id``
    defaults to the folder name.
    """

    name = "visium"
    inputs = (
        Input("path", "dir", "Space Ranger outs folder."),
        Input("slide", "file", "Full-resolution image."),
    )
    library_id_help = "Slide id (default: folder name)."
    mpp_help = "Microns per pixel, when the slide has none."

    def __init__(
        self,
        path: str | Path,
        *,
        slide: str | Path | None = None,
        library_id: str | None = None,
        mpp: float | None = None,
        min_match: float = 1.0,
    ) -> None:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"Visium folder {path} does not exist or is not a folder")
        default_id = path.parent.name if path.name == "outs" else path.name
        super().__init__(slide=slide, library_id=library_id or default_id, mpp=mpp)
        self.path = path
        self.min_match = min_match
        self._hires: tuple[np.ndarray, float] | None = None

    def load(self) -> Spots:
        path = self.path
        adata_counts, counts_file = _read_counts(path)
        positions, positions_file = read_positions(path / "spatial")
        scalefactors_file = path / "spatial" / "scalefactors_json.json"
        scalefactors = read_json_object(scalefactors_file, InputError)
        diameter_key = Key.scalefactors.spot_diameter_fullres
        if diameter_key not in scalefactors:
            raise InputError(f"{scalefactors_file}: field 'spot_diameter_fullres' is missing")
        diameter = scalefactors[diameter_key]
        if not (_is_number(diameter) and math.isfinite(diameter) and diameter > 0):
            raise InputError(
                f"{scalefactors_file}: spot_diameter_fullres must be a positive number of pixels, got {diameter!r}"
            )
        found = self.match(adata_counts.obs_names, positions.index, str(counts_file), str(positions_file))
        adata_counts = adata_counts[found].copy()
        pos = positions.loc[adata_counts.obs_names]
        self._scalefactors = scalefactors
        hires, scalef = _read_hires(path / "spatial", scalefactors)
        self._hires = (hires, scalef) if hires is not None else None
        return Spots(
            counts=adata_counts.X,
            barcodes=adata_counts.obs_names,
            genes=adata_counts.var_names,
            xy=pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64),
            source=str(counts_file),
            positions=str(positions_file),
            spot_diameter_fullres=float(scalefactors[diameter_key]),
            spot_diameter_source="scalefactors_json.json spot_diameter_fullres",
            gene_ids=adata_counts.var.get(Key.var.gene_ids, pd.Series(adata_counts.var_names)).to_list(),
            in_tissue=pos[Key.obs.in_tissue].to_numpy().astype(bool),
            obs_extra=pd.DataFrame({c: pos[c].to_numpy() for c in (Key.obs.array_row, Key.obs.array_col)}),
            extra_scalefactors=other_scalefactors(scalefactors),
            extra_metadata={Key.metadata.source_path: str(path.resolve())},
        )

    def platform_hires(self) -> tuple[np.ndarray, float] | None:
        return self._hires

    def fallback_mpp(self, spots: Spots) -> tuple[float, str]:
        """A slide without MPP metadata (a plain image): from the 55 um Visium spot diameter."""
        diameter = float(self._scalefactors[Key.scalefactors.spot_diameter_fullres])
        return VISIUM_SPOT_DIAMETER_UM / diameter, "spot diameter (55 um)"

    def without_slide(self, spots: Spots) -> SlideView:
        """Space Ranger's hires (or lowres) PNG; the MPP from the 55 um Visium spot unless given."""
        if self._hires is None:
            raise InputError(
                f"{self.path / 'spatial'}: no tissue_hires_image.png or tissue_lowres_image.png, and no slide given"
            )
        hires, scalef = self._hires
        h, w = hires.shape[:2]
        check_spots_in_image(
            spots.xy,
            int(w / scalef) + 1,
            int(h / scalef) + 1,
            [str(b) for b in spots.barcodes],
            spots.positions,
        )
        if self.mpp is not None:
            return SlideView(hires, scalef, float(self.mpp), "given", None)
        mpp = VISIUM_SPOT_DIAMETER_UM / float(self._scalefactors[Key.scalefactors.spot_diameter_fullres])
        log.info("%s: no slide given; MPP %.4f derived from spot_diameter_fullres", self.library_id, mpp)
        return SlideView(hires, scalef, mpp, "spot diameter (55 um)", None)


read_visium = VisiumReader.as_function("read_visium")


def read_positions(spatial_dir: Path) -> tuple[pd.DataFrame, Path]:
    """Spot table indexed by barcode, whichever Space Ranger version wrote it."""
    v3, v2, v1 = (
        spatial_dir / "tissue_positions.parquet",
        spatial_dir / "tissue_positions.csv",
        spatial_dir / "tissue_positions_list.csv",
    )
    file = next((f for f in (v3, v2, v1) if f.is_file()), None)
    if file is None:
        raise InputError(
            f"{spatial_dir}: no tissue_positions.parquet, tissue_positions.csv or tissue_positions_list.csv"
        )
    try:
        if file == v3:
            table = pd.read_parquet(v3)
        elif file == v2:
            table = pd.read_csv(v2)
            _check_v2_header(table, file)
        else:
            table = _read_v1_positions(v1)
    except InputError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{file}: spot positions cannot be parsed ({reason})") from None
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{file}: missing columns {missing}; found {list(table.columns)}")
    barcode = Key.obs.barcode
    table[barcode] = table[barcode].astype(str)
    duplicated = table[barcode].duplicated()
    if duplicated.any():
        raise InputError(f"{file}: duplicate barcodes, e.g. {table.loc[duplicated, barcode].iloc[0]!r}")
    for col in POSITION_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise InputError(f"{file}: column {col!r} must be numeric")
    return table.set_index(barcode), file


_EXPECTED_COLUMNS = f"{len(POSITION_COLUMNS)} columns ({', '.join(POSITION_COLUMNS)})"


def _read_v1_positions(file: Path) -> pd.DataFrame:
    """Space Ranger 1.x ``tissue_positions_list.csv``: six columns, no header (a header row is tolerated)."""
    table = pd.read_csv(file, header=None)
    if len(table) and str(table.iloc[0, 0]).strip().lower() == Key.obs.barcode:
        table = pd.read_csv(file)  # a header row after all: the v2 layout under the v1 name
        _check_v2_header(table, file)
        return table
    if table.shape[1] != len(POSITION_COLUMNS):
        first = ",".join(str(v) for v in table.iloc[0].tolist()) if len(table) else ""
        raise InputError(
            f"{file}: expected {_EXPECTED_COLUMNS} without a header, found {table.shape[1]} "
            f"column(s); first row: {first[:120]!r}"
        )
    table.columns = POSITION_COLUMNS
    return table


def _check_v2_header(table: pd.DataFrame, file: Path) -> None:
    """A Space Ranger 2.x ``tissue_positions.csv`` starts with the header row of its six columns."""
    found = [str(c) for c in table.columns]
    if found == POSITION_COLUMNS or set(POSITION_COLUMNS) <= set(found):
        return
    if len(found) == len(POSITION_COLUMNS) and Key.obs.barcode not in found:
        with file.open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()  # as written: pandas renames repeated header cells
        raise InputError(
            f"{file}: expected a header row naming {_EXPECTED_COLUMNS}; the first row is "
            f"{first[:120]!r}, which looks like data: a headerless Space Ranger 1.x file "
            "belongs in tissue_positions_list.csv"
        )
    raise InputError(
        f"{file}: expected a header row naming {_EXPECTED_COLUMNS}; found {len(found)} column(s): {found[:8]}"
    )


def _read_counts(path: Path) -> tuple[ad.AnnData, Path]:
    h5 = path / "filtered_feature_bc_matrix.h5"
    mtx = path / "filtered_feature_bc_matrix"
    try:
        if h5.is_file():
            adata = sc.read_10x_h5(h5)
            file = h5
        elif mtx.is_dir():
            adata = sc.read_10x_mtx(mtx, var_names="gene_symbols", make_unique=False)
            file = mtx
        else:
            raise InputError(
                f"{path}: no filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/ folder"
            )
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            f"{h5 if h5.exists() else mtx}: not a readable 10x feature-barcode matrix ({exc})"
        ) from None
    return adata, file


def _read_hires(spatial_dir: Path, scalefactors: dict) -> tuple[np.ndarray | None, float]:
    for name, key in (
        ("tissue_hires_image.png", Key.scalefactors.tissue_hires_scalef),
        ("tissue_lowres_image.png", Key.scalefactors.tissue_lowres_scalef),
    ):
        file = spatial_dir / name
        if file.is_file():
            if key not in scalefactors:
                raise InputError(f"{spatial_dir / 'scalefactors_json.json'}: {key!r} missing for {name}")
            scalef = scalefactors[key]
            if not (_is_number(scalef) and math.isfinite(scalef) and 0 < scalef <= 1):
                raise InputError(
                    f"{spatial_dir / 'scalefactors_json.json'}: {key} must be a number in (0, 1] "
                    f"(image px per full-resolution px), got {scalef!r}"
                )
            try:
                with Image.open(file) as img:  # PIL's pixel limit applies: these images are ~2000 px
                    arr = np.asarray(img.convert("RGB"))
            except Image.DecompressionBombError as exc:
                raise InputError(
                    f"{file}: refused to decode, the header claims too many pixels for a Space Ranger "
                    f"{name.split('_')[1]} image (at most a few thousand px a side): {exc}"
                ) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise InputError(f"{file}: cannot decode image ({exc})") from None
            return arr, float(scalefactors[key])
    return None, 1.0


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def other_scalefactors(scalefactors: dict) -> dict:
    """The numeric fields of a ``scalefactors_json.json`` other than the two the contract sets itself
    (NaN or infinite ones are left out, with a warning: the contract's scale factors are finite)."""
    own = (Key.scalefactors.tissue_hires_scalef, Key.scalefactors.spot_diameter_fullres)
    numbers = {k: v for k, v in scalefactors.items() if k not in own and _is_number(v)}
    bad = sorted(k for k, v in numbers.items() if not math.isfinite(v))
    if bad:
        log.warning(
            "scalefactors_json.json: %s not finite; left out of uns['spatial'][...]['scalefactors']", bad
        )
    return {k: v for k, v in numbers.items() if k not in bad}


# --------------------------------------------------------------------------- writer


def write_10x_h5(
    path: str | Path,
    counts: np.ndarray | sp.spmatrix,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    gene_names: Sequence[str],
    genome: str = "GRCh38",
    *,
    library_id: str = "library",
    chemistry_description: str = "Spatial 3' v1",
) -> Path:
    """Write a Space Ranger / Cell Ranger v3-style ``filtered_feature_bc_matrix.h5`` (spots x genes counts).

    The root attributes are those Space Ranger writes (``library_ids``, ``chemistry_description``,
    ``filetype``, ``software_version``, ``version``, ``original_gem_groups``): ``scanpy.read_visium``
    and ``squidpy.read.visium`` take the library id from them. ``software_version`` names histokg,
    not Space Ranger.
    """
    csr = sp.csr_matrix(counts)
    n_spots, n_genes = csr.shape
    if len(barcodes) != n_spots or len(gene_ids) != n_genes or len(gene_names) != n_genes:
        raise InputError(
            f"{path}: counts {csr.shape} do not match {len(barcodes)} barcodes / {len(gene_ids)} genes"
        )
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["chemistry_description"] = chemistry_description
        f.attrs["filetype"] = "matrix"
        f.attrs["library_ids"] = np.array([library_id], dtype="S")
        f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
        f.attrs["software_version"] = f"histokg-{_histokg_version()}"
        f.attrs["version"] = np.int64(2)
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=csr.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=csr.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=csr.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_genes, n_spots], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * n_genes))
        feats.create_dataset("genome", data=np.array([genome.encode()] * n_genes))
        feats.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        feats.create_dataset("name", data=np.array(gene_names, dtype="S"))
    return Path(path)


def _histokg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("histokg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def write_spaceranger_outs(
    out: str | Path,
    *,
    positions: pd.DataFrame,
    counts: np.ndarray,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    gene_names: Sequence[str],
    scalefactors: dict,
    hires: np.ndarray,
    lowres: np.ndarray,
    library_id: str | None = None,
) -> Path:
    """Write the files of a Space Ranger ``outs`` folder that :func:`read_visium` (and scanpy/squidpy) read.

    ``library_id`` (default: the folder name) goes into the matrix file's ``library_ids`` attribute.
    """
    out = Path(out)
    spatial = out / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    write_10x_h5(
        out / "filtered_feature_bc_matrix.h5",
        counts,
        barcodes,
        gene_ids,
        gene_names,
        library_id=library_id or out.name,
    )
    with atomic_open(spatial / "tissue_positions.csv", "w", encoding="utf-8", newline="") as fh:
        positions[POSITION_COLUMNS].to_csv(fh, index=False)
    write_json(spatial / "scalefactors_json.json", scalefactors)
    for name, img in (("tissue_hires_image.png", hires), ("tissue_lowres_image.png", lowres)):
        with atomic_path(spatial / name) as tmp:
            Image.fromarray(img).save(tmp, format="PNG", compress_level=1)
    return out
