"""Small file helpers: atomic writes, content hashes, output paths checked before any compute, output
locks, and torch tensor files read without unpickling (:func:`load_tensor_file`).

One implementation of the writers serves both packages (``pathways_kg.io``; ``pathways_kg`` must not
import ``histokg``). ``atomic_path`` yields a temporary path beside the target that replaces it only when
the block succeeds (fsync'd, usual permissions): readers never see a half-written file, and a crash
leaves the previous version intact; it replaces only a regular file (never a device node, FIFO, socket,
folder or symbolic link). :func:`check_output_dir`, :func:`check_output_file` and
:func:`claim_output_dir` fail fast, with the path named, when an output cannot be written, would replace
something without being asked, or is one of the command's own inputs (``--overwrite`` never allows
that). :func:`output_lock` (or the :func:`holding_lock` decorator) keeps a second process out of an
output while a command writes it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from histokg.errors import InputError
from pathways_kg.io import (
    atomic_open,
    atomic_path,
    file_sha256,
    folder_problem,
    input_overlap,
    output_problem,
    path_kind,
    read_json_object,
    write_json,
)
from pathways_kg.io import output_lock as _output_lock

log = logging.getLogger(__name__)

__all__ = [
    "atomic_open",
    "atomic_path",
    "check_not_input",
    "check_output_dir",
    "check_output_file",
    "check_path_length",
    "claim_output_dir",
    "file_sha256",
    "holding_lock",
    "load_tensor_file",
    "output_lock",
    "read_json_object",
    "read_table",
    "short_path",
    "write_json",
]

PathLike = str | os.PathLike


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


def check_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents) and prove it is writable; error naming it otherwise.

    A symbolic link to a folder is followed (runs on a scratch disk linked into a project are common);
    anything else that is not a folder (a file, a FIFO, a device node, a dangling link) is refused.
    """
    path = check_path_length(path, what)
    problem = folder_problem(path)
    if problem:
        raise InputError(f"{what} {path} {problem}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be written ({exc.strerror or exc})") from None
    return path


def check_output_file(
    path: PathLike,
    what: str = "output file",
    *,
    overwrite: bool = False,
    inputs: Iterable[PathLike | None] = (),
) -> Path:
    """Check that file ``path`` can be written: a regular file or nothing (not a folder, device node,
    FIFO, socket or symbolic link), not one of the command's ``inputs`` (whatever ``overwrite`` says),
    not there unless ``overwrite``, its folder writable."""
    path = check_path_length(path, what)
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{what} {path} is a folder; give a file name")
    problem = output_problem(path)
    if problem:
        raise InputError(f"{what} {path} {problem}")
    check_not_input([path], inputs, what)
    if path.exists() and not overwrite:
        raise InputError(
            f"{what} {path} already exists; pass --overwrite to replace it, or choose another name"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path} is not writable")
    check_output_dir(path.parent, f"folder of {what} {path}")
    return path


def check_not_input(
    outputs: Iterable[PathLike], inputs: Iterable[PathLike | None], what: str = "output"
) -> None:
    """Refuse an output that is one of the command's inputs, or a folder holding one (it would be
    replaced or removed): the same path, a symbolic link to it, or a hard link (``os.path.samefile``)."""
    overlap = input_overlap(outputs, inputs)
    if overlap:
        raise InputError(
            f"{what} {overlap}; writing it would destroy that input (--overwrite never allows this): "
            "choose another output"
        )


def claim_output_dir(
    path: PathLike,
    outputs: Sequence[str],
    *,
    what: str,
    overwrite: bool = False,
    hint: str = "",
    label: str = "output folder",
    folders: Sequence[str] = (),
    inputs: Iterable[PathLike | None] = (),
) -> Path:
    """Make folder ``path`` ready for a new ``what`` that writes ``outputs`` (file or folder names;
    ``folders`` names those that are folders).

    A folder already holding any of them is an earlier ``what``: refused (naming what was found) unless
    ``overwrite``, which removes exactly those outputs first, so two runs never mix. Refused whatever
    ``overwrite`` says: an output of the wrong kind (a folder where a file goes, a file where a folder
    goes, a FIFO or device node), and an output that is or holds one of ``inputs``. Then checked
    writable (:func:`check_output_dir`, errors naming it ``label``). ``hint`` says what else the user can do.
    """
    path = check_path_length(path, label)
    found = [name for name in outputs if os.path.lexists(path / name)] if path.is_dir() else []
    for name in found:
        _check_kind(path / name, name in folders, what)
    check_not_input([path / name for name in outputs], inputs, f"{label} {path}: output")
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
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()  # a file, or a link (never what it points to)
    return check_output_dir(path, label)


def _check_kind(target: Path, folder: bool, what: str) -> None:
    """Refuse an existing output of the wrong kind: ``--overwrite`` would remove something histokg never made."""
    if target.is_symlink():
        return  # removing a link loses nothing it points to
    kind = path_kind(target.lstat())
    expected = "a folder" if folder else "a regular file"
    if kind != expected:
        raise InputError(
            f"{target} is {kind}, but {what} writes {'a folder' if folder else 'a file'} there; "
            "move it away, or choose another folder"
        )


def output_lock(path: PathLike, command: str, *, folder: bool = True, label: str = ""):
    """Hold an exclusive lock on output ``path`` (a folder; a file when not ``folder``) while a command
    writes it: a second process refuses at once, naming the holder (``command``, pid, host, since when).

    A context manager (``pathways_kg.io.output_lock``): ``fcntl.flock`` on ``<folder>/.histokg.lock``
    (``.<name>.lock`` beside a file), released when the process ends however it ends, so a lock file
    left by a killed run blocks nothing.
    """
    check_path_length(path, label or ("output folder" if folder else "output file"))
    return _output_lock(path, command, folder=folder, label=label, error=InputError)


def holding_lock(param: str, command: str, *, folder: bool = True, label: str = "") -> Callable:
    """Decorator: the function runs holding :func:`output_lock` on its argument ``param`` (none when None)."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = signature.bind(*args, **kwargs).arguments.get(param)
            if target is None:
                return fn(*args, **kwargs)
            with output_lock(target, command, folder=folder, label=label):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


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
