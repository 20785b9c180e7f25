"""Mixed precision of a run: which autocast dtype (``optim.amp``) and fp16's gradient scaler."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from histokg.errors import ConfigError

__all__ = ["Precision", "amp_dtype"]


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``optim.amp`` on ``device``: bf16 or fp16, or None (full float32). ``auto`` is bf16 where supported."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if mode in ("fp16", "auto"):
        return torch.float16
    raise ConfigError(f"optim.amp: {mode!r} is not auto, bf16, fp16 or off")


class Precision:
    """``autocast()`` for the forward passes; ``scaler`` (active for fp16 only) for the backward pass."""

    def __init__(self, mode: str, device: torch.device):
        self.device = device
        self.dtype = amp_dtype(mode, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
