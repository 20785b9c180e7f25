"""User-facing errors of pathways_kg.

Every error a user can cause (a malformed GMT or TSV line, an unknown relation or entity, a bad config
key) is a :class:`KGError`, a ``ValueError`` whose message names the file, line and value at fault.
The CLI prints these messages without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class KGError(ValueError):
    """Malformed or inconsistent knowledge-graph input (files, config, ids)."""


def at(path: str | Path | None, line: int | None, message: str) -> KGError:
    """A :class:`KGError` whose message starts with ``path:line:`` (either part optional)."""
    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    return KGError(where + message)


def suggest(value: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest valid value, or an empty string."""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
