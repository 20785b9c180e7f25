"""How much memory this process may still allocate, and a check to run before decoding a large image.

An image header is read without decoding its pixels (PIL and OpenSlide open lazily), so a file
whose header claims more pixels than the machine can hold is refused before anything is
allocated: a 5 KB JPEG claiming 65000 x 65000 px would otherwise take tens of GB.

The budget is the smallest of: ``MemAvailable`` in ``/proc/meminfo``; the cgroup memory limit
minus its current use (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); the address-space limit
(``RLIMIT_AS``) minus what the process already maps. Where none of these can be read (not Linux),
half the physical memory, or 4 GiB as a last resort.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from histokg.errors import SlideError

log = logging.getLogger(__name__)

FALLBACK_BYTES = 4 * 2**30
_UNLIMITED = 2**60  # cgroup v1 reports "no limit" as a number near 2**63


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> tuple[int, str] | None:
    root = Path("/sys/fs/cgroup")
    for limit_file, usage_file in (
        (root / "memory.max", root / "memory.current"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_file)
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = _read_int(usage_file) or 0
        return max(0, limit - usage), f"cgroup limit {limit_file}"
    return None


def _address_space_available() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - mapped)


def available_memory() -> tuple[int, str]:
    """Bytes this process can still allocate, and where that figure comes from."""
    found: list[tuple[int, str]] = []
    meminfo = _meminfo_available()
    if meminfo is not None:
        found.append((meminfo, "MemAvailable in /proc/meminfo"))
    cgroup = _cgroup_available()
    if cgroup is not None:
        found.append(cgroup)
    rlimit = _address_space_available()
    if rlimit is not None:
        found.append((rlimit, "the process address-space limit (ulimit -v)"))
    if found:
        return min(found)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return physical // 2, "half the physical memory"
    except (ValueError, OSError, AttributeError):
        return FALLBACK_BYTES, "a fixed 4 GiB fallback (memory size unknown)"


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def check_image_memory(
    path: str | Path, width: int, height: int, bytes_per_px: float, what: str = "decoding it"
) -> None:
    """Raise :class:`SlideError` when ``width`` x ``height`` pixels would not fit in memory.

    ``bytes_per_px`` is the peak memory the operation needs per pixel (e.g. PIL's 4-byte decode
    buffer plus the 3-byte RGB array). Nothing is allocated here.
    """
    need = int(width) * int(height) * bytes_per_px
    available, source = available_memory()
    if need > available:
        raise SlideError(
            f"slide {path}: the image claims {width}x{height} px ({width * height / 1e6:,.0f} Mpx); "
            f"{what} needs about {format_bytes(need)} of memory but only {format_bytes(available)} is "
            f"available ({source}); the file may be corrupt or a decompression bomb, or is too large to "
            "hold whole: convert it to a pyramidal TIFF on a larger machine"
        )
    log.debug("%s: %dx%d px, %s needs %s of %s", path, width, height, what, need, available)
