"""Embed the full graph from the shipped sources with each KG model; print link-prediction metrics.

Builds the graph (Reactome + MSigDB Hallmark + the curated layer; ``--panglao PATH`` adds PanglaoDB),
prints its size, then trains TransE, RotatE, ComplEx and KG2E with the short config
``configs/kg/full.yaml`` and prints filtered MRR and Hits@1/3/10 on held-out triples next to the
random-embedding baseline (same model class, untrained), with training and evaluation times.

Run: ``python benchmarks/kg_embed.py [--epochs 20] [--models transe rotate] [--panglao PATH] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kg" / "full.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["transe", "rotate", "complex", "kg2e"])
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--max-triples", type=int, help="override the number of test triples evaluated")
    parser.add_argument("--panglao", help="PanglaoDB markers TSV to include")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pathways_kg.build import build_graph
    from pathways_kg.config import load_config
    from pathways_kg.embed import embed_graph
    from pathways_kg.graph import write_graph

    overrides = []
    if args.epochs:
        overrides.append(f"embed.training.epochs={args.epochs}")
    if args.max_triples:
        overrides.append(f"embed.evaluation.max_triples={args.max_triples}")
    if args.panglao:
        overrides.append(f"build.sources.panglao={json.dumps(args.panglao)}")
    cfg = load_config(CONFIG, overrides)
    print(
        f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}"
    )
    results: dict = {"config": str(CONFIG), "overrides": overrides, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        graph = build_graph(cfg.build)
        write_graph(graph, Path(tmp) / "graph")
        s = graph.summary()
        results["graph"] = {
            k: s[k]
            for k in ("n_entities", "n_edges", "entities_by_type", "edges_by_family", "edges_by_relation")
        }
        print(
            f"graph: {s['n_entities']} entities, {s['n_edges']} edges (built in {time.perf_counter() - start:.1f} s)"
        )
        print("  entities: " + ", ".join(f"{k} {v}" for k, v in s["entities_by_type"].items()))
        print("  families: " + ", ".join(f"{k} {v}" for k, v in s["edges_by_family"].items()))
        header = f"{'model':8s} {'dim':>4s} {'epochs':>6s} {'train s':>8s} {'total s':>8s} | {'MRR':>7s} {'H@1':>6s} {'H@3':>6s} {'H@10':>6s} | {'rnd MRR':>7s} {'rnd H@10':>8s}"
        print("\n" + header + "\n" + "-" * len(header))
        for name in args.models:
            c = load_config(CONFIG, [*overrides, f"embed.model.name={name}"])
            start = time.perf_counter()
            bundle = embed_graph(Path(tmp) / "graph", c.embed)
            total = time.perf_counter() - start
            m, r = bundle.meta["metrics"]["trained"], bundle.meta["metrics"]["random"]
            results["models"][name] = {**{k: bundle.meta[k] for k in ("embedding_dim", "epochs", "train_seconds", "split")},
                                       "total_seconds": total, "metrics": bundle.meta["metrics"]}  # fmt: skip
            print(f"{name:8s} {bundle.meta['embedding_dim']:4d} {bundle.meta['epochs']:6d} {bundle.meta['train_seconds']:8.1f} "
                  f"{total:8.1f} | {m['mrr']:7.4f} {m['hits_at_1']:6.3f} {m['hits_at_3']:6.3f} {m['hits_at_10']:6.3f} | "
                  f"{r['mrr']:7.4f} {r['hits_at_10']:8.4f}", flush=True)  # fmt: skip
        split = next(iter(results["models"].values()))["split"] if results["models"] else {}
        print(
            f"\nsplit {split}; filtered rank-based evaluation on the evaluated test triples, filter = train + valid + test"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
