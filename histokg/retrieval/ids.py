"""Identifiers that the index hands out and accepts: slide ids, region ids, KG entity ids.

Slide ids become file names inside an index folder and path segments in the web app, so they are
restricted to a safe alphabet (letters, digits, ``.``, ``_``, ``-``; no leading dot, at most 128
characters). Anything else is refused with an :class:`~histokg.errors.InputError` naming the value.
"""

from __future__ import annotations

import re

from histokg.errors import InputError

SLIDE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_SLIDE_ID = re.compile(SLIDE_ID_PATTERN)


def check_slide_id(value: object, what: str = "slide id") -> str:
    """Return ``value`` as a slide id, or raise InputError naming it."""
    text = str(value)
    if not _SLIDE_ID.fullmatch(text) or ".." in text:
        raise InputError(
            f"{what} {text[:80]!r} is not valid: use 1-128 letters, digits, '.', '_' or '-' "
            "(not starting with '.', no '..')"
        )
    return text


def safe_slide_id(value: object) -> str:
    """A valid slide id made from any string (a file stem, a library id): other characters become '_'."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", str(value)).lstrip("._-") or "slide"
    text = text.replace("..", "_")
    return text[:128]
