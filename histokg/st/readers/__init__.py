"""The spatial-transcriptomics readers: one module per platform, found by package discovery.

Every module of this package is imported (:func:`histokg.registry.import_modules`; no list of imports
is kept by hand), and every :class:`~histokg.st.reader.Reader` subclass they define is registered
under its ``name`` in :data:`reader_registry` (:class:`histokg.registry.Registry`). A name follows
the registry's naming rule (``Visium_HD``, ``visium-hd`` and ``VisiumHD`` are one name) or is one of
a reader's ``synonyms``; an unknown name is one :class:`~histokg.errors.InputError` with the nearest
names. ``histokg read NAME`` (:mod:`histokg.cli`) is made from the registry.

=============  ==============================================================  ===================
module         platform                                                        function
=============  ==============================================================  ===================
``visium``     10x Visium / Space Ranger 1.x-3.x outs                          ``read_visium``
``visium_hd``  10x Visium HD binned outputs                                    ``read_visium_hd``
``xenium``     10x Xenium transcripts binned into square pseudo-spots          ``read_xenium``
``legacy``     legacy Spatial Transcriptomics (counts TSV, spot table, image)  ``read_legacy_st``
``hest``       HEST-1k .h5ad + slide                                           ``read_hest``
=============  ==============================================================  ===================

Adding a platform: one module here with one ``Reader`` subclass, and one contract case in
``tests/test_readers_contract.py`` (docs/architecture.md, "How to add a reader"); nothing here changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from histokg.errors import InputError
from histokg.registry import Registry, import_modules, subclasses
from histokg.st.reader import Reader

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["get_reader", "read", "reader_classes", "reader_modules", "reader_names", "reader_registry"]

_MODULES = import_modules(__name__, __path__)

#: every reader of this package, by name (sorted)
reader_registry: Registry[type[Reader]] = Registry(
    sorted(subclasses(Reader), key=lambda cls: cls.name), "reader", error=InputError
)


def reader_modules() -> list[str]:
    """The modules of this package that discovery imported."""
    return list(_MODULES)


def reader_classes() -> list[type[Reader]]:
    """The registered reader classes, in the order of their names."""
    return list(reader_registry)


def reader_names() -> list[str]:
    """The registered readers' names (the ``histokg read`` subcommands)."""
    return reader_registry.names


def get_reader(name: str) -> type[Reader]:
    """The reader class ``name`` stands for (naming rule or synonym); an unknown name names the nearest ones."""
    return reader_registry.lookup(name)


def read(tech: str, *args: Any, **kwargs: Any) -> ad.AnnData:
    """Read one section with the reader ``tech`` stands for: ``read("xenium", path, slide=...)``."""
    return get_reader(tech)(*args, **kwargs).read()
