"""The torch device a ``--device`` option or a config's ``device`` names, checked in one place.

Every command that takes a device (``histokg embed``, ``histokg index build|add``, ``histokg train``'s
``device``, ``histokg bench``'s ``features.device`` and ``device``) and the library functions behind
them (:func:`histokg.tl.embed`, :func:`histokg.tl.embed_slide`, the trainer) resolve it here:

- ``auto`` (or ``None``): this process's GPU where CUDA is available (``cuda:LOCAL_RANK`` under
  torchrun), else the CPU;
- ``cpu``; ``cuda`` (this process's GPU, as ``auto``); ``cuda:N`` for one of the GPUs torch sees;
  ``mps`` on Apple silicon.

Anything else (``banana``, ``cuda:7`` on a machine without that GPU, ``cuda`` without CUDA) is one
:class:`~histokg.errors.InputError` that names the value and the devices this machine has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from histokg.errors import InputError

if TYPE_CHECKING:
    import torch

KINDS = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _available() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"this machine has {n} CUDA device{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1}) and the CPU"
    return "torch sees no GPU on this machine: use cpu (or auto)"


def resolve_device(
    name: str | torch.device | None = None,
    *,
    local_rank: int = 0,
    what: str = "--device",
    error: type[Exception] = InputError,
) -> torch.device:
    """The :class:`torch.device` ``name`` stands for (see the module docstring); ``what`` names the option
    or config key in errors, ``error`` is the exception type raised (``ConfigError`` for configs)."""
    import torch

    if isinstance(name, torch.device):
        text = str(name)
    else:
        text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (device.index or 0) < 0:
        raise error(f"{what} {name!r}: not a device; use one of {', '.join(KINDS)}")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise error(f"{what} {name!r}: MPS (Apple GPU) is not available; {_available()}")
        return device
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise error(f"{what} {name!r}: CUDA is not available; {_available()}")
    if device.index is None:  # plain "cuda": this process's GPU
        return torch.device(f"cuda:{local_rank}")
    if device.index >= torch.cuda.device_count():
        raise error(f"{what} {name!r}: no such GPU; {_available()}")
    return device


def check_device(name: str | None, what: str = "--device") -> str | None:
    """``name`` unchanged when :func:`resolve_device` accepts it (for options passed on as text, e.g. to
    Dask workers); otherwise its one-line error."""
    if name is not None:
        resolve_device(name, what=what)
    return name
