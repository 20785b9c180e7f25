"""10x Visium HD (Space Ranger 3+): the binned outputs at one bin size, on the full-resolution image.

Space Ranger writes ``outs/binned_outputs/square_002um``, ``square_008um`` and ``square_016um``; each
holds ``filtered_feature_bc_matrix.h5`` (or the mtx folder) and ``spatial/`` with
``tissue_positions.parquet`` (``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
pxl_col_in_fullres``, centres in pixels of the full-resolution microscope image) and
``scalefactors_json.json``, whose ``microns_per_pixel`` is that image's resolution and ``bin_size_um``
the bin's side. A bin is one spot: its diameter is the bin size, its MPP the scalefactors' value.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from histokg.errors import InputError
from histokg.io import read_json_object
from histokg.keys import Key
from histokg.st.reader import Input, Reader, Spots
from histokg.st.readers.visium import _is_number, _read_counts, other_scalefactors, read_positions

log = logging.getLogger(__name__)

BIN_FOLDER = re.compile(r"^square_(\d{3})um$")
DEFAULT_BIN_UM = 8


def bin_folder_name(bin_um: int) -> str:
    """``square_008um`` for 8."""
    return f"square_{int(bin_um):03d}um"


def available_bins(binned: Path) -> list[int]:
    """Bin sizes (um) with a ``square_XXXum`` folder under ``binned``."""
    bins = [int(m.group(1)) for p in binned.iterdir() if p.is_dir() and (m := BIN_FOLDER.match(p.name))]
    return sorted(bins)


class VisiumHDReader(Reader):
    """10x Visium HD: Space Ranger binned outputs at one bin size (2, 8 or 16 um squares)."""

    name = "visium-hd"
    synonyms = ("hd",)  # visium_hd, VisiumHD, ... are spellings of the name itself
    inputs = (
        Input("path", "dir", "Space Ranger outs folder of a Visium HD run (or its binned_outputs/)."),
        Input("slide", "file", "The full-resolution microscope image given to Space Ranger."),
        Input(
            "bin_um", "int", "Bin size in um (a binned_outputs/square_XXXum folder: 2, 8, 16).", flag="--bin"
        ),
    )
    library_id_help = "Slide id (default: the outs folder's parent name, or the folder name)."
    mpp_help = "Microns per pixel of the slide (default: microns_per_pixel of scalefactors_json.json)."
    mpp_mismatch_hint = " (the full-resolution image given to Space Ranger)"

    def __init__(
        self,
        path: str | Path,
        *,
        slide: str | Path,
        bin_um: int = DEFAULT_BIN_UM,
        library_id: str | None = None,
        mpp: float | None = None,
        min_match: float = 1.0,
    ) -> None:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"Visium HD folder {path} does not exist or is not a folder")
        binned = path if path.name == "binned_outputs" else path / "binned_outputs"
        if not binned.is_dir():
            raise InputError(
                f"{path}: no binned_outputs/ folder; expected a Space Ranger Visium HD outs folder "
                "(binned_outputs/square_002um, square_008um, square_016um)"
            )
        outs = binned.parent
        default_id = outs.parent.name if outs.name == "outs" else outs.name
        super().__init__(slide=slide, library_id=library_id or default_id, mpp=mpp)
        self.bin_um = int(bin_um)
        self.bin_dir = binned / bin_folder_name(self.bin_um)
        if not self.bin_dir.is_dir():
            bins = available_bins(binned)
            there = f"the bins here are {', '.join(str(b) for b in bins)} um" if bins else "it holds no bins"
            raise InputError(f"{binned}: no {self.bin_dir.name} folder for bin {self.bin_um} um; {there}")
        self.min_match = min_match

    def load(self) -> Spots:
        adata_counts, counts_file = _read_counts(self.bin_dir)
        positions, positions_file = read_positions(self.bin_dir / "spatial")
        self.scalefactors_file = self.bin_dir / "spatial" / "scalefactors_json.json"
        scalefactors = read_json_object(self.scalefactors_file, InputError)
        self.microns_per_pixel = self._positive(scalefactors, "microns_per_pixel", limit=100.0)
        bin_size = self._positive(scalefactors, "bin_size_um", limit=1000.0)
        if not math.isclose(bin_size, self.bin_um, rel_tol=1e-6):
            raise InputError(
                f"{self.scalefactors_file}: bin_size_um is {bin_size:g} but the folder is {self.bin_dir.name}"
            )
        found = self.match(adata_counts.obs_names, positions.index, str(counts_file), str(positions_file))
        adata_counts = adata_counts[found].copy()
        pos = positions.loc[adata_counts.obs_names]
        log.info(
            "%s: %d bins of %d um from %s", self.library_id, adata_counts.n_obs, self.bin_um, self.bin_dir
        )
        return Spots(
            counts=adata_counts.X,
            barcodes=adata_counts.obs_names,
            genes=adata_counts.var_names,
            xy=pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64),
            source=str(counts_file),
            positions=str(positions_file),
            spot_diameter_um=bin_size,
            spot_diameter_source=f"bin size ({self.scalefactors_file.name} bin_size_um = {bin_size:g})",
            gene_ids=adata_counts.var.get(Key.var.gene_ids, pd.Series(adata_counts.var_names)).to_list(),
            in_tissue=pos[Key.obs.in_tissue].to_numpy().astype(bool),
            obs_extra=pd.DataFrame({c: pos[c].to_numpy() for c in (Key.obs.array_row, Key.obs.array_col)}),
            extra_scalefactors=other_scalefactors(scalefactors),
            extra_metadata={
                Key.metadata.source_path: str(self.bin_dir.resolve()),
                "bin_size_um": bin_size,
                Key.metadata.spot_shape: "square",
            },
        )

    def platform_mpp(self, spots: Spots) -> tuple[float, str]:
        return self.microns_per_pixel, f"{self.scalefactors_file} microns_per_pixel"

    def _positive(self, scalefactors: dict, key: str, *, limit: float) -> float:
        if key not in scalefactors:
            raise InputError(
                f"{self.scalefactors_file}: field {key!r} is missing (Space Ranger writes it for Visium HD bins)"
            )
        value = scalefactors[key]
        if not _is_number(value) or not math.isfinite(value) or not 0 < value < limit:
            raise InputError(
                f"{self.scalefactors_file}: {key} must be a positive number below {limit:g}, got {value!r}"
            )
        return float(value)


read_visium_hd = VisiumHDReader.as_function("read_visium_hd")
