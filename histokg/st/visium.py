"""The former home of the Visium reader, kept because ``histokg.retrieval.shards`` imports it from here.

The reader is :mod:`histokg.st.readers.visium`; new code imports ``histokg.st.read_visium``.
"""

from histokg.st.readers.visium import read_visium

__all__ = ["read_visium"]
