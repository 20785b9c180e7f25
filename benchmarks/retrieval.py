"""Region-index scale: build time, query latency and recall of HNSW and IVF against exact search.

Region vectors are simulated from real embeddings: a checkpoint (``--checkpoint``, or a tiny model
trained here on a small synthetic study) embeds real tissue: the tiles of the OpenSlide test slide
CMU-1-Small-Region and the spots of the her2st sections C2-C5 and the MOB sections (from
``../shared/data``). Each simulated vector is a random real vector plus isotropic Gaussian noise
(per-dimension sigma = half the real vectors' median nearest-neighbour distance / sqrt(d)),
re-normalised: the cluster structure of real embeddings at any size. For each size the benchmark
builds exact (``IndexFlatIP``), HNSW (M=32, efConstruction=80) and IVF-Flat (2 sqrt(N) lists,
k-means on 64 vectors per list) indexes exactly as :mod:`histokg.retrieval.faiss_index` does, and
times single queries (one thread, top-10) over held-out simulated queries; recall@10 is measured
against the exact index.

Run: ``python benchmarks/retrieval.py [--sizes 1000 100000 1000000] [--queries 200] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    from histokg.testing import shared_data_dir

    try:
        return shared_data_dir()
    except RuntimeError as exc:
        sys.exit(str(exc))


def tiny_checkpoint(tmp: Path) -> Path:
    from histokg.config import load_config
    from histokg.synth import SynthConfig, generate_study
    from histokg.train import TrainConfig, train

    generate_study(tmp / "study", SynthConfig(seed=7, n_sections=3, width_um=1500.0, height_um=1300.0))
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.study={tmp / 'study'}",
            f"out_dir={tmp / 'run'}",
            "data.patch_px=64",
            "data.n_genes=128",
            "model.image_encoder=test_efficientnet",
            "model.embed_dim=64",
            "model.expr_hidden=[128]",
            "optim.epochs=4",
            "optim.batch_size=32",
            "early_stopping.patience=0",
        ],
    )
    return train(cfg).last_checkpoint


def real_vectors(checkpoint: Path, data: Path) -> np.ndarray:
    from histokg.checkpoint import load_model
    from histokg.st import read_legacy_st
    from histokg.tl.embed import embed, embed_slide

    model = load_model(checkpoint)
    parts = [embed_slide(data / "wsi" / "CMU-1-Small-Region.svs", model).obsm["X_histokg"]]
    for sec in ("C2", "C3", "C4", "C5"):
        h = data / "her2st"
        adata = read_legacy_st(
            h / "counts" / f"{sec}.tsv.gz",
            h / "spots" / f"{sec}_selection.tsv",
            h / "images" / f"{sec}_HE.jpg",
        )
        embed(adata, model)
        parts.append(adata.obsm["X_histokg"])
    for i in (1, 2, 3, 4):
        m = data / "mob"
        adata = read_legacy_st(m / f"MOB{i}.tsv", m / f"alignment_table_MOB{i}.tsv", m / f"MOB{i}.jpg")
        adata = adata[:, []].copy()  # mouse Ensembl ids: the image tower only
        embed(adata, model)
        parts.append(adata.obsm["X_histokg"])
    return np.concatenate(parts).astype(np.float32)


def simulate(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    from histokg.retrieval.faiss_index import normalize

    dist, _ = NearestNeighbors(n_neighbors=2).fit(real).kneighbors(real)
    sigma = 0.5 * float(np.median(dist[:, 1])) / np.sqrt(real.shape[1])
    out = np.empty((n, real.shape[1]), np.float32)
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        base = real[rng.integers(len(real), size=m)]
        out[start : start + m] = normalize(base + rng.normal(0, sigma, size=base.shape).astype(np.float32))
    return out


def latency(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    import faiss

    faiss.omp_set_num_threads(1)
    ids = np.empty((len(queries), k), np.int64)
    times = []
    for i, qv in enumerate(queries):
        t = time.perf_counter()
        _, found = index.search(qv[None], k)
        times.append(time.perf_counter() - t)
        ids[i] = found[0]
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    times_ms = np.asarray(times) * 1000
    return ids, float(np.median(times_ms)), float(np.percentile(times_ms, 95))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def bench_size(x: np.ndarray, queries: np.ndarray, k: int) -> list[dict]:
    from histokg.retrieval import faiss_index as fi

    n = len(x)
    ids = np.arange(n, dtype=np.int64)
    rows = []
    t = time.perf_counter()
    exact = fi.make_index("flat", x.shape[1])
    fi.add(exact, x, ids)
    build = time.perf_counter() - t
    truth, med, p95 = latency(exact, queries, k)
    rows.append(
        {
            "n": n,
            "index": "exact (flat)",
            "setting": "",
            "build_s": build,
            "recall@10": 1.0,
            "median_ms": med,
            "p95_ms": p95,
        }
    )
    for kind, settings in (("hnsw", (16, 64, 256)), ("ivf", (4, 16, 64))):
        t = time.perf_counter()
        index = fi.make_index(kind, x.shape[1], x if kind == "ivf" else None)
        fi.add(index, x, ids)
        build = time.perf_counter() - t
        for s in settings:
            if kind == "hnsw":
                fi.set_search_effort(index, ef_search=s)
                label = f"efSearch={s}"
            else:
                nlist = fi.ivf_nlist(n)
                fi.set_search_effort(index, nprobe=min(s, nlist))
                label = f"nprobe={min(s, nlist)}/{nlist}"
            found, med, p95 = latency(index, queries, k)
            rows.append(
                {
                    "n": n,
                    "index": kind,
                    "setting": label,
                    "build_s": build,
                    "recall@10": recall(found, truth),
                    "median_ms": med,
                    "p95_ms": p95,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or tiny_checkpoint(Path(tmp))
        real = real_vectors(ckpt, shared_data())
    print(
        f"real embeddings: {real.shape} from {ckpt if args.checkpoint else 'a tiny model trained here'} ({time.perf_counter() - t0:.0f} s)"
    )
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.sizes:
        x = simulate(real, n, rng)
        queries = simulate(real, args.queries, rng)
        rows += bench_size(x, queries, 10)
        del x
    print(
        f"\n{'regions':>9s} {'index':14s} {'setting':18s} {'build s':>8s} {'recall@10':>9s} {'median ms':>9s} {'p95 ms':>7s}"
    )
    for r in rows:
        print(
            f"{r['n']:9d} {r['index']:14s} {r['setting']:18s} {r['build_s']:8.2f} {r['recall@10']:9.3f} {r['median_ms']:9.3f} {r['p95_ms']:7.3f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"dim": int(real.shape[1]), "n_real": int(len(real)), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
