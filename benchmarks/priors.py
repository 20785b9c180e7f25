"""Cost of the KG prior W for a batch of 1,024 spots, next to one resnet18 training step.

Builds the graph restricted to the synthetic study's genes, a bundle with the demo's dimensions
(TransE, 64; random values: the cost does not depend on them), draws 1,024 spots from the synthetic
expression model, and times (median of repeats):

- W from packed representations (``pair_weights_from_packed``: what the trainer does per batch),
- W from raw counts (activations + family representations + W),
- a forward + backward step of timm's resnet18 at 224 px on a batch of 32 (and 8) images,

then prints the ratios. Run: ``python benchmarks/priors.py [--threads 2] [--batch 1024]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_counts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    from histokg.synth.biology import REGIONS
    from histokg.synth.expression import build_expression_model, draw_counts, spot_programs

    rng = np.random.default_rng(seed)
    model = build_expression_model(rng)
    fractions = rng.dirichlet(np.full(len(REGIONS), 0.3), size=n)
    composition, activity, library = spot_programs(model, fractions, rng)
    return model.genes, draw_counts(model, composition, activity, library, rng)


def resnet_step(batch: int) -> Callable[[], None]:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 224, 224)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from histokg.priors import KGPrior, PriorConfig
    from pathways_kg.build import build_graph
    from pathways_kg.graph import write_graph
    from pathways_kg.testing import random_bundle

    genes, counts = synthetic_counts(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        graph = build_graph(universe=genes)
        write_graph(graph, Path(tmp) / "graph")
        build_s = time.perf_counter() - start
        bundle = random_bundle(Path(tmp) / "graph", Path(tmp) / "bundle", model="transe", dim=64)
        start = time.perf_counter()
        prior = KGPrior.from_bundle(bundle, genes, PriorConfig())
        init_s = time.perf_counter() - start
    packed = prior.encode(counts)
    info = prior.describe()
    active = [f for f, a in prior.alpha.items() if a]
    print(
        f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"graph for the synthetic study's {len(genes)} genes: {len(graph.entities)} entities, {len(graph.edges)} edges "
          f"(build {build_s:.1f} s); prior init {init_s:.2f} s")  # fmt: skip
    print(f"prior: {info['activated']} activated entities, families {info['families']}, packed dim {prior.packed_dim}, "
          f"W uses {active}")  # fmt: skip

    w_packed = timed(lambda: prior.pair_weights_from_packed(packed), args.repeats)
    w_raw = timed(lambda: prior.pair_weights_from_packed(prior.encode(counts)), max(3, args.repeats // 5))
    acts = timed(lambda: prior.activations(counts), max(3, args.repeats // 5))
    step32 = timed(resnet_step(32), 3)
    step8 = timed(resnet_step(8), 3)

    b = args.batch
    print(f"\nW for {b} spots from packed representations : {1e3 * w_packed:9.1f} ms")
    print(
        f"W for {b} spots from raw counts              : {1e3 * w_raw:9.1f} ms  (activations alone {1e3 * acts:.1f} ms)"
    )
    print(f"resnet18 fwd+bwd+step, 224 px, batch 32       : {1e3 * step32:9.1f} ms")
    print(f"resnet18 fwd+bwd+step, 224 px, batch 8        : {1e3 * step8:9.1f} ms")
    print(f"ratio W(packed, {b}) / resnet18 step(32)     : {w_packed / step32:9.4f}")
    print(f"ratio W(raw, {b}) / resnet18 step(32)        : {w_raw / step32:9.4f}")


if __name__ == "__main__":
    main()
