"""Spatial transcriptomics: readers into the AnnData contract, spot-patch pairing, training datasets."""

from histokg.st.contract import build_anndata, concat_sections, validate
from histokg.st.visium import read_visium, write_10x_h5, write_spaceranger_outs

__all__ = [
    "build_anndata",
    "concat_sections",
    "read_visium",
    "validate",
    "write_10x_h5",
    "write_spaceranger_outs",
]
