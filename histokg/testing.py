"""Helpers for histokg's tests and benchmarks: where the read-only real data lies, and a free local port
with a wait for a server started on it.

The real data (her2st sections, the CMU-1 slide, Space Ranger layouts, KG sources; see each folder's
PROVENANCE.md) is never part of the project: it is read from ``$HISTOKG_SHARED_DATA``, or from a
``shared/data`` folder beside the checkout or beside one of its parent folders.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["free_port", "shared_data_dir", "wait_for_http"]

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200 while ``process`` (the server) runs; a RuntimeError when it exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as res:
                if res.status == 200:
                    return
        except OSError:  # not listening yet, or an HTTP error status (urllib.error.URLError is an OSError)
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.2)
