"""Spatial transcriptomics: readers into the AnnData contract, spot-patch pairing, training datasets.

Readers: one :class:`~histokg.st.reader.Reader` subclass per platform, looked up by name in
:mod:`histokg.st.registry` (``read("xenium", path, slide=...)``, ``histokg read TECH``).
"""

from histokg.st.contract import build_anndata, concat_sections, validate
from histokg.st.registry import get_reader, read, reader_names
from histokg.st.visium import read_visium, write_10x_h5, write_spaceranger_outs

__all__ = [
    "build_anndata",
    "concat_sections",
    "get_reader",
    "read",
    "read_visium",
    "reader_names",
    "validate",
    "write_10x_h5",
    "write_spaceranger_outs",
]
