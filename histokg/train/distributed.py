"""torch.distributed helpers: process-group setup from torchrun's environment and gathers.

Negatives come from the global batch: embeddings are all-gathered *with* gradients
(``torch.distributed.nn.functional.all_gather``), so every rank computes the loss of the whole
global batch. Its backward sums each rank's share into the local embeddings, and DDP's gradient
averaging then yields exactly the gradient of the single-process loss on the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, differentiably (rank order)."""
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (no gradient)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``device`` of the config: ``auto`` is this rank's GPU where there is one, else the CPU; ``cuda`` is
    this rank's GPU (:func:`histokg.devices.resolve_device`, shared with inference)."""
    from histokg.devices import resolve_device as resolve
    from histokg.errors import ConfigError

    return resolve(name, local_rank=info.local_rank, what="device", error=ConfigError)
