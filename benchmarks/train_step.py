"""Training-step cost of each loss on the same batch and encoder, against InfoNCE, in one run.

Run: .venv/bin/python benchmarks/train_step.py [--encoder resnet18] [--px 224] [--batch 32] [--steps 5]
     [--device cuda --amp bf16]   (e.g. --encoder resnet50 --px 224 --batch 256 on a GPU)

The batch is real: spots of a generated synthetic study with their patches, log-normalised gene
panel and KG prior inputs; the KG bundle is a real pykeen KG2E embedding of the graph restricted to
the study's genes (KG2E so that kg_gaussian can run; W comes from its means for the other losses).
Prints ms per optimiser step (forward, backward, AdamW step; fastest of interleaved rounds), pairs/s, the ratio to InfoNCE, the
time to compute W alone, and the bare image-encoder forward+backward throughput for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histokg.losses import LOSSES, LossInputs, build_loss
from histokg.models import DualEncoder, ModelConfig
from histokg.pp import panel_log1p
from histokg.priors import KGPrior, PriorConfig
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig
from histokg.st.study import load_study
from histokg.synth import SynthConfig, generate_study
from histokg.train.distributed import DistInfo
from histokg.train.engine import JointModule


def build_bundle(tmp: Path, genes: list[str]) -> Path:
    from pathways_kg.build import build_graph
    from pathways_kg.config import Component, EmbedConfig, TrainingConfig
    from pathways_kg.embed import embed_graph
    from pathways_kg.graph import write_graph

    write_graph(build_graph(universe=genes), tmp / "graph")
    cfg = EmbedConfig(
        model=Component("kg2e", {"embedding_dim": 64}), training=TrainingConfig(epochs=5, batch_size=2048)
    )
    embed_graph(tmp / "graph", cfg, tmp / "bundle")
    return tmp / "bundle"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(fn, steps: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--px", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed rounds (each loss once per round)")
    p.add_argument("--genes", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    args = p.parse_args()
    device = torch.device(args.device)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_study(tmp / "study", SynthConfig(n_sections=2, width_um=2000, height_um=1800))
        adata = load_study(tmp / "study")
        bundle = build_bundle(tmp, list(adata.var_names))
        prior = KGPrior.from_bundle(bundle, list(adata.var_names), PriorConfig())
        idx = np.resize(
            np.arange(adata.n_obs), args.batch
        )  # repeats spots only if the batch exceeds the study
        n = len(np.unique(idx))
        genes = list(adata.var_names[: args.genes])
        ds = SpotPatchDataset(
            adata, PairingConfig(patch_um=112, patch_px=args.px), expression=panel_log1p(adata, genes)
        )
        images = torch.stack(
            [torch.from_numpy(ds.read_image(int(i)).transpose(2, 0, 1).copy()).float() / 255 for i in idx]
        )
        counts = adata.layers["counts"][idx]
        batch = {
            "image": images.to(device),
            "expr": torch.from_numpy(ds.expression[idx]).to(device),
            "kg": prior.encode(counts).to(device),
        }
        g_mean, g_var = prior.spot_gaussians(counts)
        batch["g_mean"] = torch.as_tensor(np.asarray(g_mean), dtype=torch.float32, device=device)
        batch["g_var"] = torch.as_tensor(np.asarray(g_var), dtype=torch.float32, device=device)

        steps = {}
        cfg = ModelConfig(image_encoder=args.encoder, embed_dim=128)
        for name in LOSSES:
            torch.manual_seed(0)
            model = DualEncoder(cfg, len(genes)).to(device)
            loss_fn = build_loss(name, cfg.embed_dim, batch["g_mean"].shape[1]).to(device)
            joint = JointModule(model, loss_fn, prior, DistInfo())
            opt = torch.optim.AdamW(joint.parameters(), lr=1e-4)
            needs = {"kg"} if loss_fn.needs_prior else set()
            needs |= {"g_mean", "g_var"} if loss_fn.needs_gaussians else set()
            b = {k: v for k, v in batch.items() if k in {"image", "expr"} | needs}

            def step(joint=joint, opt=opt, b=b):
                with (
                    torch.autocast(device.type, dtype=amp)
                    if amp
                    else torch.autocast(device.type, enabled=False)
                ):
                    loss = joint(b)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()  # warm-up
            steps[name] = step
        # Interleave the losses round by round and keep each one's fastest step, so that drifts in
        # machine load hit every loss alike.
        times = {name: [] for name in steps}
        for _ in range(args.steps):
            for name, step in steps.items():
                times[name].append(time_steps(step, 1, device, warmup=0))
        rows = [(name, min(t)) for name, t in times.items()]

        # The loss alone (forward + backward on fixed embeddings, W included): the precise cost of
        # a KG prior, free of the encoder's run-to-run noise.
        loss_only = {}
        emb = torch.nn.functional.normalize(torch.randn(args.batch, cfg.embed_dim, device=device), dim=1)
        for name in LOSSES:
            loss_fn = build_loss(name, cfg.embed_dim, batch["g_mean"].shape[1]).to(device)
            f = emb.clone().requires_grad_(True)
            g = torch.roll(emb, 1, 0).clone().requires_grad_(True)
            scale = torch.tensor(14.3, device=device, requires_grad=True)

            def loss_step(loss_fn=loss_fn, f=f, g=g, scale=scale):
                inputs = LossInputs(img=f, expr=g, logit_scale=scale)
                if loss_fn.needs_prior:
                    inputs.W = prior.pair_weights_from_packed(batch["kg"])
                if loss_fn.needs_gaussians:
                    inputs.gauss_mean, inputs.gauss_var = batch["g_mean"], batch["g_var"]
                loss_fn(inputs)["loss"].backward()

            loss_only[name] = time_steps(loss_step, 50, device, warmup=5)
        w_time = time_steps(lambda: prior.pair_weights_from_packed(batch["kg"]), 20, device)
        torch.manual_seed(0)
        bare = DualEncoder(cfg, len(genes)).image.backbone.to(device)

        def bare_step():
            with (
                torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False)
            ):
                out = bare(batch["image"])
            out.float().sum().backward()

        bare_time = time_steps(bare_step, args.steps, device)

    base = dict(rows)["infonce"]
    print(
        f"device {device}, encoder {args.encoder}, {args.px} px, batch {args.batch} (n spots {n}), amp {args.amp}, threads {torch.get_num_threads()}"
    )
    print(
        f"{'loss':14s} {'ms/step':>9s} {'pairs/s':>9s} {'vs infonce':>11s} {'loss+W only ms':>15s} {'extra vs infonce, % of step':>28s}"
    )
    for name, t in rows:
        extra = (loss_only[name] - loss_only["infonce"]) / base * 100
        print(
            f"{name:14s} {t * 1e3:9.1f} {args.batch / t:9.1f} {t / base:10.3f}x {loss_only[name] * 1e3:15.3f} {extra:27.3f}%"
        )
    print(
        f"W for the batch from packed KG representations: {w_time * 1e3:.2f} ms ({w_time / base * 100:.2f}% of an infonce step)"
    )
    print(
        f"bare {args.encoder} forward+backward: {bare_time * 1e3:.1f} ms/batch = {args.batch / bare_time:.1f} images/s"
    )


if __name__ == "__main__":
    main()
