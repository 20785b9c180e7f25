"""The registry of spatial-transcriptomics readers: ``histokg read TECH`` and :func:`read`.

Every module of this package that defines a :class:`histokg.st.reader.Reader` subclass is imported
(found by reading the modules' source, so the rest of the package is not imported for it), and every
subclass is registered (class_resolver's ``ClassResolver.from_subclasses``, as pykeen registers its
losses). A name is
looked up case- and separator-insensitively (``visium-hd``, ``visium_hd``, ``VisiumHD``) or by a
reader's ``synonyms``; an unknown name is one :class:`InputError` with the nearest names.

Adding a platform: one module in this package with one ``Reader`` subclass, and one contract test
case in ``tests/test_readers_contract.py`` (docs/architecture.md, "How to add a reader"); nothing
here changes (the imports below only re-export the built-in readers).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import anndata as ad
from class_resolver import ClassResolver

from histokg.errors import InputError
from histokg.registry import unknown_name
from histokg.st.hest import HESTReader
from histokg.st.legacy import LegacySTReader
from histokg.st.reader import Reader
from histokg.st.visium import VisiumReader
from histokg.st.visium_hd import VisiumHDReader
from histokg.st.xenium import XeniumReader

__all__ = [
    "HESTReader",
    "LegacySTReader",
    "Reader",
    "VisiumHDReader",
    "VisiumReader",
    "XeniumReader",
    "get_reader",
    "read",
    "reader_names",
    "reader_resolver",
]


def reader_modules() -> list[str]:
    """The modules of ``histokg.st`` whose source defines a class based on ``Reader`` (or on a reader)."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            bases = [
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                for b in getattr(node, "bases", [])
            ]
            if isinstance(node, ast.ClassDef) and any(b.endswith("Reader") for b in bases):
                found.append(path.stem)
                break
    return found


for _module in reader_modules():
    importlib.import_module(f"{__package__}.{_module}")

reader_resolver: ClassResolver[Reader] = ClassResolver.from_subclasses(Reader)
for _cls in list(reader_resolver.lookup_dict.values()):
    for _spelling in (_cls.name, *_cls.synonyms):  # the command name is always a way to ask for it
        reader_resolver.synonyms.setdefault(reader_resolver.normalize(_spelling), _cls)


def reader_classes() -> list[type[Reader]]:
    """The registered reader classes, in the order of their names."""
    return sorted(set(reader_resolver.lookup_dict.values()), key=lambda cls: cls.name)


def reader_names() -> list[str]:
    """The registered readers' names (the ``histokg read`` subcommands)."""
    return [cls.name for cls in reader_classes()]


def get_reader(name: str) -> type[Reader]:
    """The reader class registered as ``name`` (or a synonym); an unknown name names the nearest ones."""
    try:
        return reader_resolver.lookup(name)
    except (KeyError, TypeError, ValueError):
        pass
    spellings = {s: cls.name for cls in reader_classes() for s in cls.synonyms}
    raise unknown_name(
        "reader",
        name,
        reader_names(),
        error=InputError,
        listing="registered readers",
        spellings=spellings,
        cutoff=0.5,
    )


def read(tech: str, *args, **kwargs) -> ad.AnnData:
    """Read one section with the reader registered as ``tech``: ``read("xenium", path, slide=...)``."""
    return get_reader(tech)(*args, **kwargs).read()
