"""How an index lives on disk: every change is a new *generation*, switched in by one atomic rename.

Layout of an index folder::

    CURRENT                  {"format": ..., "generation": "gen-000003"}: the index is the generation it names
    gen-000003/              one complete generation (never changed once CURRENT names it):
        manifest.json        written last; lists the other files with their SHA-256 and every slide's shard hash
        regions.faiss, prototypes.npy, center.npy, descriptors.npz
        shards/<slide>.npz   hard links (copies where the file system has none) to the one shard file
        thumbs/<slide>.png
    gen-000002/              the generation it replaced, kept until the next change (a server that loaded it)
    staging/shards, staging/thumbs
                             slides embedded for a build or add that is not committed yet (a rerun resumes)

A change (``index build``, ``index add``, a repair) writes a whole new generation folder beside the
current one, then replaces ``CURRENT`` with :func:`os.replace` (atomic on POSIX), then removes what
the new generation no longer needs. A process killed at any point therefore leaves either the old
index (``CURRENT`` unchanged; the half-written folder is ignored and removed by the next change or
``histokg index verify --repair``) or the new one (leftovers of the clean-up are removed likewise).
Shard files are immutable and shared between generations by hard links, so a generation costs the
size of its FAISS index and descriptors, not of the archive.

An index written before generations (``manifest.json``, ``regions.faiss``... directly in the folder,
no ``CURRENT``) is read as it is (:attr:`Layout.generation` None) and becomes generation 1 on its
first change.

:data:`fault_hook` is for tests: when set, :func:`reached` calls it with the name of every step of a
change, so a test can kill the process at each one (``tests/test_index_generations.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from histokg.errors import InputError
from histokg.io import atomic_open

log = logging.getLogger(__name__)

FORMAT = "histokg-retrieval-index"
POINTER = "CURRENT"
STAGING = "staging"
MANIFEST = "manifest.json"
#: the files of a generation besides the manifest (the manifest records their hashes)
GENERATION_FILES = ("regions.faiss", "prototypes.npy", "center.npy", "descriptors.npz")
#: what an index written before generations keeps directly in its folder
LEGACY_FILES = (MANIFEST, "regions.faiss", "prototypes.npy", "center.npy")
LEGACY_DIRS = ("shards", "thumbs")
_GEN = re.compile(r"^gen-(\d{6})$")

#: tests only: called with the name of every step of a change (see the module docstring)
fault_hook: Callable[[str], None] | None = None


def reached(step: str) -> None:
    """A change reached ``step`` (a kill here must leave the old or the new index)."""
    if fault_hook is not None:
        fault_hook(step)


@dataclass(frozen=True)
class Layout:
    """Where an index's current files are: ``root`` is its generation folder (the index folder
    itself for an index written before generations, ``generation`` None)."""

    path: Path
    root: Path
    generation: str | None

    @property
    def number(self) -> int:
        return generation_number(self.generation) if self.generation else 0

    def shard_path(self, slide_id: str) -> Path:
        return self.root / "shards" / f"{slide_id}.npz"

    def thumb_path(self, slide_id: str) -> Path:
        return self.root / "thumbs" / f"{slide_id}.png"


def generation_number(name: str) -> int:
    m = _GEN.match(name)
    if not m:
        raise ValueError(f"not a generation folder name: {name!r}")
    return int(m.group(1))


def generation_name(number: int) -> str:
    return f"gen-{number:06d}"


def holds_index(path: str | Path) -> bool:
    """Whether folder ``path`` holds an index (a pointer, or an index written before generations)."""
    path = Path(path)
    return (path / POINTER).exists() or (path / MANIFEST).is_file()


def generation_dirs(path: str | Path) -> list[Path]:
    """Every ``gen-NNNNNN`` folder of the index, oldest first (committed or not)."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = [p for p in path.iterdir() if _GEN.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: generation_number(p.name))


def read_pointer(path: str | Path) -> str:
    """The generation ``CURRENT`` names; InputError naming the file when it is not a valid pointer."""
    pointer = Path(path) / POINTER
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{pointer}: not a readable index pointer ({exc})") from None
    name = data.get("generation") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(name, str):
        raise InputError(f"{pointer}: not an index pointer of format {FORMAT!r}")
    if not _GEN.match(name):
        raise InputError(f"{pointer}: generation {name[:40]!r} is not a gen-NNNNNN folder name")
    return name


def current(path: str | Path) -> Layout:
    """The layout of the index in ``path``; InputError when it holds none or its pointer is broken."""
    path = Path(path)
    if (path / POINTER).exists():
        name = read_pointer(path)
        root = path / name
        if not (root / MANIFEST).is_file():
            raise InputError(
                f"{path / POINTER} names {name}, which has no {MANIFEST}; "
                f"run `histokg index verify {path} --repair`"
            )
        return Layout(path, root, name)
    if (path / MANIFEST).is_file():
        return Layout(path, path, None)
    raise InputError(
        f"{path} is not a retrieval index (no {POINTER} or {MANIFEST}); build one with `histokg index build`"
    )


def staging_dir(path: str | Path) -> Path:
    """Where a build or add embeds slides before they are committed (``staging/shards``, ``staging/thumbs``)."""
    return Path(path) / STAGING


# --------------------------------------------------------------------------- writing a generation


def new_generation(path: str | Path) -> Path:
    """A new, empty generation folder numbered after every existing one (committed or not)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    numbers = [generation_number(p.name) for p in generation_dirs(path)]
    with contextlib.suppress(InputError):
        if (path / POINTER).exists():
            numbers.append(generation_number(read_pointer(path)))
    gen = path / generation_name(max(numbers, default=0) + 1)
    gen.mkdir()
    (gen / "shards").mkdir()
    (gen / "thumbs").mkdir()
    reached("mkdir")
    return gen


def link(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link; a copy where links are not possible)."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or none that links: a copy, written atomically
        from histokg.io import atomic_path

        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    reached(f"link {dst.parent.name}/{dst.name}")


def sync_tree(folder: Path) -> None:
    """fsync a folder and its sub-folders (the directory entries of a finished generation)."""
    for sub in (folder, *(p for p in folder.iterdir() if p.is_dir())):
        _fsync_dir(sub)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def switch(path: str | Path, gen: Path) -> None:
    """Make ``gen`` the index: replace ``CURRENT`` atomically (the one step that changes the index)."""
    path = Path(path)
    sync_tree(gen)
    reached("before pointer")
    with atomic_open(path / POINTER, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"format": FORMAT, "generation": gen.name}) + "\n")
    _fsync_dir(path)
    reached("pointer")


def clean_up(path: str | Path, keep: set[str], staged: list[Path] = ()) -> list[str]:
    """After a switch: remove generation folders not in ``keep``, the files of an index written
    before generations, the committed ``staged`` files and stray temporary files; returns what went."""
    path = Path(path)
    removed: list[str] = []
    for gen in generation_dirs(path):
        if gen.name not in keep:
            shutil.rmtree(gen, ignore_errors=True)
            removed.append(gen.name)
            reached(f"remove {gen.name}")
    for name in LEGACY_FILES:
        if (path / name).is_file():
            (path / name).unlink()
            removed.append(name)
            reached(f"remove {name}")
    for name in LEGACY_DIRS:
        if (path / name).is_dir():
            shutil.rmtree(path / name, ignore_errors=True)
            removed.append(f"{name}/")
            reached(f"remove {name}/")
    for file in staged:
        if file.is_file():
            file.unlink()
            removed.append(f"{STAGING}/{file.parent.name}/{file.name}")
    if staged:
        reached("remove staged")
    staging = staging_dir(path)
    if staging.is_dir() and not any(p.is_file() for p in staging.rglob("*")):
        shutil.rmtree(staging, ignore_errors=True)
    for tmp in stray_files(path):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


def stray_files(path: str | Path) -> list[Path]:
    """Temporary files a killed atomic write left in the index folder (``.CURRENT.*.tmp``)."""
    path = Path(path)
    return sorted(path.glob(f".{POINTER}.*.tmp")) if path.is_dir() else []


def current_generation(path: str | Path) -> str | None:
    """The generation ``CURRENT`` names now (None: no pointer, or not a readable one)."""
    try:
        return read_pointer(path) if (Path(path) / POINTER).exists() else None
    except InputError:
        return None


def kept_generations(path: str | Path) -> set[str]:
    """The generations a clean-up keeps: the current one and the one it replaced (its manifest's
    ``previous``), which readers that loaded it before the switch may still be reading."""
    current = current_generation(path)
    if current is None:
        return set()
    try:
        previous = json.loads((Path(path) / current / MANIFEST).read_text(encoding="utf-8")).get("previous")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        previous = None
    return {current} | ({previous} if isinstance(previous, str) and _GEN.match(previous) else set())
