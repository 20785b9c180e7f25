"""Spatial transcriptomics: readers into the AnnData contract, spot-patch pairing, training datasets.

Readers: one :class:`~histokg.st.reader.Reader` subclass per platform in :mod:`histokg.st.readers`,
looked up by name (``read("xenium", path, slide=...)``, ``histokg read TECH``), and one function per
platform made from it (``read_visium``, ``read_visium_hd``, ``read_xenium``, ``read_legacy_st``,
``read_hest``, ``read_spatialdata``; their arguments are the reader's).
"""

from histokg.st.contract import build_anndata, concat_sections, validate
from histokg.st.readers import get_reader, read, reader_names
from histokg.st.readers.hest import read_hest
from histokg.st.readers.legacy import read_legacy_st
from histokg.st.readers.spatialdata import read_spatialdata
from histokg.st.readers.visium import read_visium, write_10x_h5, write_spaceranger_outs
from histokg.st.readers.visium_hd import read_visium_hd
from histokg.st.readers.xenium import read_xenium

__all__ = [
    "build_anndata",
    "concat_sections",
    "get_reader",
    "read",
    "read_hest",
    "read_legacy_st",
    "read_spatialdata",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "reader_names",
    "validate",
    "write_10x_h5",
    "write_spaceranger_outs",
]
