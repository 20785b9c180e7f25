"""DDP with global-batch negatives: 2 gloo processes with batch b give the single-process loss and
gradients of batch 2b (same weights, same data)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from histokg.losses import build_loss
from histokg.models import DualEncoder, ModelConfig
from histokg.testing import free_port
from histokg.train.distributed import DistInfo
from histokg.train.engine import JointModule

N_GENES, B = 12, 4


def make_inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2 * B, 3, 32, 32, generator=g)
    expr = torch.rand(2 * B, N_GENES, generator=g)
    return images, expr


def make_joint(info: DistInfo) -> JointModule:
    torch.manual_seed(1)
    cfg = ModelConfig(image_encoder="test_efficientnet", embed_dim=16, expr_hidden=(32,), dropout=0.0)
    model = DualEncoder(cfg, N_GENES).eval()  # eval: BatchNorm uses running stats, so shards don't matter
    return JointModule(model, build_loss("infonce", 16), None, info)


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    info = DistInfo(rank=rank, world_size=world)
    joint = make_joint(info)
    ddp = torch.nn.parallel.DistributedDataParallel(joint)
    images, expr = make_inputs()
    loss = ddp({"image": images[rank * B : (rank + 1) * B], "expr": expr[rank * B : (rank + 1) * B]})["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in joint.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore")
def test_two_process_loss_and_grads_equal_single_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    joint = make_joint(DistInfo())
    images, expr = make_inputs()
    loss = joint({"image": images, "expr": expr})["loss"]
    loss.backward()
    for rank in (0, 1):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(res["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, p in joint.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(res["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_plain_cuda_device_is_this_ranks_gpu(monkeypatch):
    """``device=cuda`` (no index) must name one GPU: torch.cuda.set_device refuses a bare "cuda"
    (seen on the H200 run of benchmarks/gpu/run.sh)."""
    import torch

    from histokg.errors import ConfigError
    from histokg.train.distributed import DistInfo, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda", DistInfo()) == torch.device("cuda:0")
    assert resolve_device("cuda", DistInfo(rank=1, world_size=2, local_rank=1)) == torch.device("cuda:1")
    assert resolve_device("cuda:3", DistInfo()) == torch.device("cuda:3")
    assert resolve_device("auto", DistInfo(local_rank=1)) == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"device 'cuda:7': no such GPU; this machine has 4 CUDA devices"):
        resolve_device("cuda:7", DistInfo())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", DistInfo()) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda", DistInfo())
