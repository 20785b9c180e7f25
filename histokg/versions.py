"""What produced an output: ``versions.yml`` (nf-core's convention) written beside a pipeline step's outputs.

One mapping per step: ``{step: {histokg, python, torch, timm[, checkpoint, checkpoint_sha256]}}``. The
package versions come from the installed distributions' metadata (:mod:`importlib.metadata`), so nothing
heavy is imported; the checkpoint's hash is the one ``uns["histokg"]["params"]`` records
(:func:`histokg.io.file_sha256`). ``histokg versions`` prints or writes it; the Snakemake workflow
(``workflow/Snakefile``) calls :func:`write_versions` after every step.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from histokg.errors import InputError
from histokg.io import atomic_open, file_sha256

PACKAGES = ("histokg", "torch", "timm")


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``"not installed"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(step: str = "histokg", *, checkpoint: str | Path | None = None) -> dict[str, dict[str, str]]:
    """``{step: {package: version, ..., checkpoint, checkpoint_sha256}}`` (the last two when given)."""
    if not step or any(c in step for c in "\n\r"):
        raise InputError(f"versions: the step name {step!r} must be one non-empty line")
    entry = {"histokg": package_version("histokg"), "python": platform.python_version()}
    entry.update({name: package_version(name) for name in PACKAGES[1:]})
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"versions: checkpoint {path} does not exist or is not a file")
        entry["checkpoint"] = str(path.resolve())
        entry["checkpoint_sha256"] = file_sha256(path)
    return {step: entry}


def versions_yaml(step: str = "histokg", *, checkpoint: str | Path | None = None) -> str:
    """:func:`versions` as YAML text."""
    import yaml

    return yaml.safe_dump(versions(step, checkpoint=checkpoint), sort_keys=False)


def write_versions(path: str | Path, step: str = "histokg", *, checkpoint: str | Path | None = None) -> Path:
    """Write :func:`versions` to ``path`` atomically (a reader never sees half a file); returns ``path``."""
    text = versions_yaml(step, checkpoint=checkpoint)
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
