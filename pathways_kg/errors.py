"""User-facing errors of pathways_kg.

Every error a user can cause (a malformed GMT or TSV line, an unknown relation or entity, a bad config
key) is a :class:`KGError`, a ``ValueError`` whose message names the file, line and value at fault.
The CLI prints these messages without a traceback. The nearest valid name of an unknown one comes from
:func:`pathways_kg.registry.did_you_mean`.
"""

from __future__ import annotations

from pathlib import Path


class KGError(ValueError):
    """Malformed or inconsistent knowledge-graph input (files, config, ids)."""


class OutputError(KGError):
    """An output that must not be written: not a regular file, or in use by another run
    (:mod:`pathways_kg.io`, shared by both packages)."""


def at(path: str | Path | None, line: int | None, message: str) -> KGError:
    """A :class:`KGError` whose message starts with ``path:line:`` (either part optional)."""
    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    return KGError(where + message)
