"""File helpers: atomic writes, hashes and the packaged data files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; it replaces ``path`` if the block succeeds."""
    path = Path(path)
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


def data_path(name: str) -> Path:
    """Path of a file shipped in ``pathways_kg/data``."""
    return Path(str(resources.files("pathways_kg") / "data" / name))
