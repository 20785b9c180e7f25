"""Helpers for histokg's tests and benchmarks: where the read-only real data lies.

The real data (her2st sections, the CMU-1 slide, Space Ranger layouts, KG sources; see each folder's
PROVENANCE.md) is never part of the project: it is read from ``$HISTOKG_SHARED_DATA``, or from a
``shared/data`` folder beside the checkout or beside one of its parent folders.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]

REPO = Path(__file__).resolve().parents[1]
_MARKER = Path("wsi") / "CMU-1-Small-Region.svs"


def shared_data_dir() -> Path:
    """The shared data folder; a RuntimeError naming where it looked when there is none."""
    candidates = [os.environ.get("HISTOKG_SHARED_DATA"), *(up / "shared" / "data" for up in REPO.parents)]
    for cand in candidates:
        if cand and (Path(cand) / _MARKER).is_file():
            return Path(cand)
    raise RuntimeError(
        "real test data not found: set HISTOKG_SHARED_DATA to the shared/data folder "
        f"(looked in {[str(c) for c in candidates if c]})"
    )
