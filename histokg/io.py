"""Small file helpers: atomic writes, content hashes, output paths checked before any compute, and torch
tensor files read without unpickling (:func:`load_tensor_file`).

One implementation of the writers serves both packages (``pathways_kg.io``; ``pathways_kg`` must not
import ``histokg``). ``atomic_path`` yields a temporary path beside the target that replaces it only when
the block succeeds (fsync'd, usual permissions): readers never see a half-written file, and a crash
leaves the previous version intact. :func:`check_output_dir` and :func:`check_output_file` fail fast,
with the path named, when an output cannot be written or would replace something without being asked.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histokg.errors import InputError
from pathways_kg.io import atomic_open, atomic_path, file_sha256, read_json_object, write_json

log = logging.getLogger(__name__)

__all__ = [
    "atomic_open",
    "claim_output_dir",
    "atomic_path",
    "check_output_dir",
    "check_output_file",
    "check_path_length",
    "file_sha256",
    "load_tensor_file",
    "read_json_object",
    "read_table",
    "short_path",
    "write_json",
]


def short_path(path: str | Path, keep: int = 80) -> str:
    """``path`` as text, with its middle left out when longer than ``keep`` characters (for messages)."""
    text = str(path)
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-(keep // 2 - 3) :]}"


def _name_max(path: Path) -> tuple[int, int]:
    """(longest name, longest path) in bytes on the file system of ``path``'s nearest existing folder."""
    folder = path.absolute()
    while folder != folder.parent:
        try:
            if folder.is_dir():
                break
        except OSError:  # this name is itself too long: look further up
            pass
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the folder is not readable
        return 255, 4096


def check_path_length(path: str | Path, what: str = "output file") -> Path:
    """Error naming ``path`` when one of its names, or the whole path, is longer than its file system
    allows (ENAMETOOLONG), before anything is computed or written."""
    path = Path(path)
    name_max, path_max = _name_max(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise InputError(
                f"{what} {short_path(path)}: the name {short_path(part, 40)!r} is {size} bytes, too long for the "
                f"file system (at most {name_max} bytes a name); choose a shorter name"
            )
    size = len(os.fsencode(str(path.absolute())))
    if size > path_max:
        raise InputError(
            f"{what} {short_path(path)}: the path is {size} bytes, too long for the file system (at most "
            f"{path_max} bytes); choose a shorter path"
        )
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents) and prove it is writable; error naming it otherwise."""
    path = check_path_length(path, what)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be written ({exc.strerror or exc})") from None
    return path


def check_output_file(path: str | Path, what: str = "output file", *, overwrite: bool = False) -> Path:
    """Check that file ``path`` can be written: a name the file system takes, not a folder, parent writable,
    not there unless ``overwrite``."""
    path = check_path_length(path, what)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(
            f"{what} {path} already exists; pass --overwrite to replace it, or choose another name"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path} is not writable")
    check_output_dir(path.parent, f"folder of {what} {path}")
    return path


def claim_output_dir(
    path: str | Path,
    outputs: Sequence[str],
    *,
    what: str,
    overwrite: bool = False,
    hint: str = "",
    label: str = "output folder",
) -> Path:
    """Make folder ``path`` ready for a new ``what`` that writes ``outputs`` (file or folder names).

    A folder already holding any of them is an earlier ``what``: refused (naming what was found) unless
    ``overwrite``, which removes exactly those outputs first, so two runs never mix. Then checked
    writable (:func:`check_output_dir`, errors naming it ``label``). ``hint`` says what else the user can do.
    """
    path = check_path_length(path, label)
    found = [name for name in outputs if (path / name).exists()] if path.is_dir() else []
    if found and not overwrite:
        raise InputError(
            f"{path} already holds {what} ({', '.join(found[:4])}); "
            + (hint or "pass --overwrite to replace it, or choose another folder")
        )
    for name in found:
        log.warning(
            "--overwrite: removing the previous %s's %s",
            what.removeprefix("a ").removeprefix("an "),
            path / name,
        )
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    return check_output_dir(path, label)


def load_tensor_file(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors: a file holding pickled Python objects
    is refused as "not a plain tensor file" (it is never unpickled), a damaged one as unreadable."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global: the file pickles Python objects
        raise InputError(
            f"{what} {path}: not a plain tensor file (it holds pickled Python objects, which histokg never "
            "loads); save a state dict of tensors with torch.save or safetensors"
        ) from None
    except Exception as exc:  # zip errors, truncation, not a torch file at all
        text = str(exc).strip()
        first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
        raise InputError(f"{what} {path}: cannot be read as a torch tensor file ({first})") from None


def read_table(path: str | Path, what: str, *, sep: str = ",", **kwargs: Any):
    """``pandas.read_csv`` of a user's table with one-line errors naming ``what`` and the file: missing,
    empty, not UTF-8 text, malformed (unbalanced quotes, ragged rows), or a header without rows."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        frame = pd.read_csv(path, sep=sep, **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {path} is empty; expected a header row and one row per entry") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "tab" if sep == "\t" else f"{sep!r}"
        raise InputError(f"{what} {path}: cannot be parsed as a {kind}-separated table ({reason})") from None
    if frame.empty:
        raise InputError(f"{what} {path}: a header ({', '.join(map(str, frame.columns[:6]))}) but no rows")
    return frame
