"""Slide descriptors: the ways to describe a whole slide by one vector, registered by name.

One module per descriptor, each with one :class:`SlideDescriptor` subclass (``mean``, ``prototypes``,
``kg``, ...). Every module of this package is imported, and every subclass that sets a ``name`` is
registered (:data:`descriptor_registry`, :class:`histokg.registry.Registry`), so the index, the
queries, ``histokg index query --descriptor``, ``histokg index evaluate``, the demo and the web app
all take their names from here (:func:`descriptor_names`, :func:`region_descriptor_names`)::

    desc = get_descriptor("prototypes")(index)   # bound to a RetrievalIndex
    matrix = desc.matrix()                        # (n_slides, d), L2-normalised
    scores = desc.similarity(matrix, matrix[0])   # similarity of every slide to the first

Adding a descriptor: one module here with one subclass (nothing else changes) and one
``DescriptorCase`` subclass in ``tests/test_retrieval_descriptors.py``, whose meta-test fails until
the case exists. The package imports numpy only (faiss when prototypes are learned), so the CLI can
list the names cheaply.
"""

from __future__ import annotations

from histokg.errors import InputError
from histokg.registry import Registry, import_modules
from histokg.retrieval.descriptors.base import SlideDescriptor

# The built-in descriptors, imported first: their order is the order of the names (help, tables).
# isort: off
from histokg.retrieval.descriptors.mean import MeanDescriptor
from histokg.retrieval.descriptors.prototypes import PrototypeDescriptor
from histokg.retrieval.descriptors.kg import KGDescriptor
# isort: on

import_modules(__name__, __path__)  # every other module of the package: the added ones

descriptor_registry: Registry[type[SlideDescriptor]] = Registry.from_subclasses(
    SlideDescriptor, "descriptor", error=InputError
)

__all__ = [
    "KGDescriptor",
    "MeanDescriptor",
    "PrototypeDescriptor",
    "SlideDescriptor",
    "descriptor_names",
    "descriptor_registry",
    "get_descriptor",
    "region_descriptor_names",
]


def descriptor_names() -> list[str]:
    """Every registered descriptor's name, built-in ones first."""
    return list(descriptor_registry.names)


def region_descriptor_names() -> list[str]:
    """The descriptors computed from a slide's region vectors alone (they describe uploads)."""
    return [name for name, cls in descriptor_registry.entries.items() if cls.from_regions]


def get_descriptor(name: str) -> type[SlideDescriptor]:
    """The descriptor class registered as ``name``; an unknown name is one InputError with the nearest."""
    return descriptor_registry.lookup(name)
