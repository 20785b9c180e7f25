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
    "file_sha256",
    "load_tensor_file",
    "read_json_object",
    "write_json",
]


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents) and prove it is writable; error naming it otherwise."""
    path = Path(path)
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
    """Check that file ``path`` can be written: not a folder, parent writable, not there unless ``overwrite``."""
    path = Path(path)
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
    path = Path(path)
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
