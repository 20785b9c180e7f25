"""User-facing errors.

Every error a user can cause (a bad file, a wrong config key, a slide without MPP) is raised as a
subclass of :class:`HistokgError` with a message that names the file, field or value at fault.
The CLI prints these messages without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HistokgError(Exception):
    """Base class for errors caused by input, not by a bug in histokg."""


class InputError(HistokgError, ValueError):
    """A file or value given to histokg is missing, malformed or inconsistent."""


class SlideError(InputError):
    """A whole-slide image cannot be opened or read."""


class ConfigError(InputError):
    """A configuration file or override is malformed or names an unknown key."""
