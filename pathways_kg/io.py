"""File helpers: atomic writes, hashes, output locks and the packaged data files.

The one implementation of the writers of both packages (``histokg.io`` re-exports them). A new file
only ever takes the place of a regular file (:func:`output_problem`: never a device node, a FIFO, a
socket, a folder or a symbolic link), and :func:`output_lock` keeps two processes from writing one
output at once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import math
import os
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import IO, Any

from pathways_kg.errors import OutputError

log = logging.getLogger(__name__)

_SPECIAL = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def path_kind(st: os.stat_result) -> str:
    """What a ``stat``/``lstat`` result is, in words: "a regular file", "a folder", "a named pipe (FIFO)"..."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return _SPECIAL.get(stat.S_IFMT(mode), "a special file")


def output_problem(path: str | os.PathLike) -> str | None:
    """Why a new file must not take ``path``'s place, or None (absent, or a regular file).

    The atomic rename of :func:`atomic_path` replaces whatever has the name: a device node, a FIFO or a
    socket would be swapped for a file, a symbolic link for a file (its target untouched, the link lost).
    The words returned follow the path in a message: ``f"{path} {problem}"``.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:  # e.g. a parent that is a file: the write itself names it
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        return (
            f"is a symbolic link (to {os.readlink(path)}); a new file would replace the link, not its "
            "target: give the target's path, or another name"
        )
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    return f"is {path_kind(st)}, not a regular file; only regular files are replaced: choose another name"


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an output folder, or None (absent, a folder, or a link to one)."""
    path = Path(path)
    if path.is_dir():
        return None
    if path.is_symlink() and not path.exists():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    if os.path.lexists(path):
        kind = path_kind(path.stat())
        return f"is {'a file' if kind == 'a regular file' else kind}, not a folder"
    return None


def input_overlap(outputs, inputs) -> str | None:
    """The first output that would replace or remove one of ``inputs``, as words ("OUT is the input IN"),
    or None. An output hits an input when it is the same path, a symbolic or hard link to it
    (``os.path.samefile``), or a folder holding it."""
    named = [Path(p) for p in inputs if p is not None and str(p) != ""]
    for out in map(Path, outputs):
        for source in named:
            src, dst = source.resolve(), out.resolve()
            relation = "is" if src == dst else "holds" if src.is_relative_to(dst) else None
            if relation is None:
                with contextlib.suppress(OSError):
                    if source.exists() and out.exists() and os.path.samefile(source, out):
                        relation = "is a hard link to"
            if relation:
                return f"{out} {relation} the input {source}"
    return None


def check_replaceable(
    path: str | os.PathLike, what: str = "output", error: type[Exception] = OutputError
) -> Path:
    """``path``, if a new file may take its place (:func:`output_problem`); ``error`` naming it otherwise."""
    problem = output_problem(path)
    if problem:
        raise error(f"{what} {path} {problem}")
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; it replaces ``path`` if the block succeeds.

    ``path`` must be absent or a regular file (:func:`check_replaceable`), checked before anything is
    written.
    """
    path = check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name is bounded: any name the file system takes for ``path`` also fits it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # on disk before it takes the final name
            os.fsync(fh.fileno())
        mask = os.umask(0)  # mkstemp makes 0600 files; give the result the usual permissions
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` when the block exits cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A JSON object from ``path``; anything else raises ``error`` naming the file (and line):
    missing, unreadable, not UTF-8, invalid JSON, or JSON that is not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; the file is always valid JSON.

    numpy arrays and scalars, tensors (anything with ``tolist``) and paths are converted; NaN and
    +-Infinity floats, nested anywhere, become ``null`` (JSON has no such numbers); any other
    non-JSON value raises ``TypeError`` before the file is touched.
    """
    text = json.dumps(to_json(obj), indent=2, allow_nan=False)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def to_json(obj: Any) -> Any:
    """``obj`` as plain JSON types: non-finite floats -> ``None``, arrays -> lists, paths -> str."""
    if isinstance(obj, float):  # also numpy.float64, a float subclass
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int):  # bool is an int
        return obj
    if isinstance(obj, Mapping):
        return {_json_key(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_json(obj.tolist())
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _json_key(key: Any) -> Any:
    if hasattr(key, "item") and not isinstance(key, str):  # numpy scalar keys
        key = key.item()
    if isinstance(key, str | int | bool) or key is None:
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else str(key)
    raise TypeError(f"cannot use {type(key).__name__} as a JSON key")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- output locks
LOCK_NAME = ".histokg.lock"  # inside a locked folder; ".<name>.lock" beside a locked file
_held: dict[tuple[int, int, str], int] = {}  # locks this process holds: (device, inode, lock name) -> depth
_held_guard = threading.Lock()


@contextlib.contextmanager
def output_lock(
    path: str | os.PathLike,
    command: str,
    *,
    folder: bool = True,
    label: str = "",
    error: type[Exception] = OutputError,
) -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` (a folder, created if needed; or a file when not
    ``folder``) while the block runs; another process asking for it gets ``error`` at once, naming the
    holder (``command``, pid, host, since when).

    ``fcntl.flock`` on a lock file (``<folder>/.histokg.lock``, or ``.<name>.lock`` beside a file) that
    records the holder. The kernel releases the lock when the holder exits, however it ends (an
    exception, Ctrl-C, SIGKILL): a lock file left by a killed run is no obstacle. The file is removed
    on a clean exit. Re-entrant within a process (a command whose library call locks the same folder);
    on a file system without locks, a warning and no lock. Folders the lock had to create are removed
    again when the block leaves them empty (a command refused before writing leaves nothing behind).
    ``label`` names the output in messages
    (default "output folder" or "output file").
    """
    path = Path(path)
    what = label or ("output folder" if folder else "output file")
    if folder:
        lock_dir, lock_name, where = path, LOCK_NAME, what
    else:
        lock_dir, lock_name, where = path.parent, _file_lock_name(path.name), f"folder of {what} {path}:"
    problem = folder_problem(lock_dir)
    if problem:
        raise error(f"{where} {lock_dir} {problem}")
    created = []  # the folders this lock makes (deepest first): removed again if left empty
    missing = lock_dir.absolute()
    while not os.path.lexists(missing) and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        st = os.stat(lock_dir)
    except OSError as exc:
        raise error(f"{where} {lock_dir} cannot be created ({exc.strerror or exc})") from None
    key = (st.st_dev, st.st_ino, lock_name)
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock_path = lock_dir / lock_name
    fd = _acquire(lock_path, path, what, command, error, folder)
    with _held_guard:
        _held[key] = 1
    try:
        yield path
    finally:
        with _held_guard:
            del _held[key]
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # while still holding it: a waiting opener sees the file gone
            os.close(fd)
        for folder_made in created:  # a command that failed before writing leaves no empty folder behind
            try:
                os.rmdir(folder_made)
            except OSError:  # not empty (the command wrote its outputs), or another process uses it
                break


def _file_lock_name(name: str) -> str:
    """``.<name>.lock``; for a name so long that this would not fit a file name (255 bytes), a digest of it."""
    lock = f".{name}.lock"
    if len(os.fsencode(lock)) <= 255:
        return lock
    import hashlib

    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:24]}.lock"


def _acquire(
    lock_path: Path, path: Path, what: str, command: str, error: type[Exception], folder: bool
) -> int | None:
    """The descriptor holding the lock of ``lock_path`` (None where the file system has no locks)."""
    import fcntl

    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise error(
                f"{what} {path} cannot be written (its lock file {lock_path}: {exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise error(
                f"{what} {path} is in use by {holder}; wait for it to finish, or choose another "
                f"{'folder' if folder else 'name'}"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning(
                "cannot lock %s (%s): a second run writing it at the same time would go unnoticed",
                path,
                exc.strerror,
            )
            os.close(fd)
            return None
        try:  # a holder may have removed the file between our open and flock: lock the current one
            current = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
        "argv": sys.argv,
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return fd


def _holder(fd: int) -> str:
    """Who holds a lock, from its lock file: "`histokg train` (pid 12, host h, since 2025-01-01 10:00:00)"."""
    try:
        record = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        pid, host = int(record["pid"]), str(record["host"])
        text = f"`{record['command']}` (pid {pid} on {host}, since {record['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not yet said which)"
    if host == socket.gethostname() and not _alive(pid):
        text += "; that process has ended, but a process it started still holds the lock"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def data_path(name: str) -> Path:
    """Path of a file shipped in ``pathways_kg/data``."""
    return Path(str(resources.files("pathways_kg") / "data" / name))
