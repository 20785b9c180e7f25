"""The web app under load: latency and memory of mixed reads, with and without uploads queued.

Builds a small index in a temporary folder from the project's synthetic data (a 3-section study and
6 phenotype-mix slides, a tiny model trained here for 2 epochs, a random KG bundle over the study's
genes), starts the real server (``histokg serve`` in its own process, on 127.0.0.1 and a free port:
loopback only) and fires a few hundred mixed GET requests from a thread pool: index info, the slide
list, a slide, its thumbnail, overlays (cluster, label, a gene), similar slides and similar regions
of a rectangle. The same requests (same order, same seed) run twice:

1. **idle**: no upload;
2. **uploads queued**: before the requests start, plain-JPEG uploads fill every pending place of
   the server (``--max-pending-uploads``, 4 by default) and a feeder thread keeps them full, so one
   job embeds on the server's CPU and the others wait while the reads are answered.

For each phase it prints p50, p95 and max latency, the throughput, and the server's resident memory
(RSS, from /proc through psutil, sampled every 50 ms: its peak during the phase); then the ratio of
the two. Numbers are printed, never asserted: they depend on the machine and on what else runs.

Run: ``python benchmarks/app_load.py [--requests 400] [--workers 8] [--json out.json]`` (about two
minutes on 2 cores; set OMP_NUM_THREADS=1 to keep the server's embedding on one core).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def build_index(tmp: Path) -> tuple[Path, Path]:
    """A small index over synthetic data, and the checkpoint that embedded it."""
    from histokg.config import load_config
    from histokg.retrieval import build_index as build
    from histokg.retrieval import specs_from_paths, specs_from_table
    from histokg.retrieval.synthetic import MixSlidesConfig, generate_mix_slides
    from histokg.st.study import load_study
    from histokg.synth import SynthConfig, generate_study
    from histokg.train import TrainConfig, train
    from pathways_kg.build import build_graph
    from pathways_kg.config import BuildConfig
    from pathways_kg.graph import write_graph
    from pathways_kg.testing import random_bundle

    study = tmp / "study"
    generate_study(study, SynthConfig(seed=7, n_sections=3, width_um=1500.0, height_um=1300.0))
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.study={study}",
            f"out_dir={tmp / 'run'}",
            "data.patch_px=32",
            "data.n_genes=64",
            "data.cache_patches=true",
            "model.image_encoder=test_efficientnet",
            "model.embed_dim=32",
            "model.expr_hidden=[64]",
            "optim.batch_size=32",
            "optim.epochs=2",
            "optim.warmup_steps=2",
            "early_stopping.patience=0",
            "log_every=1000",
        ],
    )
    checkpoint = train(cfg).last_checkpoint
    genes = list(load_study(study, with_truth=False).var_names)
    write_graph(build_graph(BuildConfig(), universe=genes), tmp / "kg" / "graph")
    bundle = random_bundle(tmp / "kg" / "graph", tmp / "kg" / "bundle", dim=16)
    mix = generate_mix_slides(tmp / "mix", MixSlidesConfig(per_mix=2, width_um=900.0, height_um=800.0))
    specs = specs_from_table(mix) + specs_from_paths([study], patient="P1")
    out = tmp / "index"
    build(specs, checkpoint, out, scheduler="sync", bundle=bundle, n_prototypes=8)
    return out, checkpoint


def start_server(index: Path, checkpoint: Path, port: int, max_pending: int) -> subprocess.Popen:
    """``histokg serve`` in its own process (its RSS is the server's alone)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable,
        "-c",
        "from histokg.cli import cli; cli()",
        "serve",
        str(index),
        "--host",
        HOST,
        "--port",
        str(port),
        "--checkpoint",
        str(checkpoint),
        "--max-pending-uploads",
        str(max_pending),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from histokg.testing import wait_for_http

    try:
        wait_for_http(f"http://{HOST}:{port}/api/info", proc, timeout=60)
    except RuntimeError as exc:
        proc.kill()
        sys.exit(str(exc))
    return proc


def request_mix(base: str, n: int, seed: int = 0) -> list[str]:
    """``n`` GET paths over the index's slides, the same for a given seed."""
    import httpx

    slides = [s["slide_id"] for s in httpx.get(f"{base}/api/slides").json()["slides"]]
    gene = httpx.get(f"{base}/api/slides/{slides[0]}").json()["genes"][0]
    rng = random.Random(seed)
    kinds = [
        lambda s: "/api/info",
        lambda s: "/api/slides",
        lambda s: f"/api/slides/{s}",
        lambda s: f"/api/slides/{s}/thumbnail",
        lambda s: f"/api/slides/{s}/overlay?feature=cluster",
        lambda s: f"/api/slides/{s}/overlay?feature=label",
        lambda s: f"/api/slides/{s}/overlay?feature=gene:{gene}&source=predicted",
        lambda s: f"/api/slides/{s}/similar?k=5",
        lambda s: f"/api/slides/{s}/similar?k=5&descriptor=mean",
        lambda s: f"/api/slides/{s}/regions/similar?x0=200&y0=200&x1=500&y1=500&units=um&k=8",
    ]
    return [rng.choice(kinds)(rng.choice(slides)) for _ in range(n)]


class RssSampler(threading.Thread):
    """The peak resident memory of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)


def upload_jpeg(px: int) -> bytes:
    """A plain JPEG of tissue on glass, about ``px`` pixels a side."""
    from PIL import Image

    rng = np.random.default_rng(3)
    img = np.full((px, px, 3), 236.0)
    img[px // 8 : -px // 8, px // 8 : -px // 8] = (175, 85, 160)
    img = (img + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class Feeder(threading.Thread):
    """Keeps every pending upload place of the server taken (a 429 means they are)."""

    def __init__(self, base: str, jpeg: bytes, mpp: float) -> None:
        super().__init__(daemon=True)
        self.base, self.jpeg, self.mpp = base, jpeg, mpp
        self.stop = threading.Event()
        self.accepted = self.refused = 0
        self.jobs: list[str] = []

    def fill(self, client) -> None:
        while True:
            res = client.post(
                f"{self.base}/api/uploads",
                files={"file": ("load.jpg", self.jpeg, "image/jpeg")},
                data={"mpp": str(self.mpp)},
            )
            if res.status_code != 202:
                if res.status_code != 429:
                    sys.exit(f"upload refused: {res.status_code} {res.text}")
                self.refused += 1
                return
            self.accepted += 1
            self.jobs.append(res.json()["job_id"])

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=60) as client:
            while not self.stop.wait(0.25):
                self.fill(client)


def phase(base: str, paths: list[str], workers: int, pid: int) -> dict:
    import httpx

    local = threading.local()

    def get(path: str) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=120)
        t0 = time.perf_counter()
        res = local.client.get(base + path)
        elapsed = time.perf_counter() - t0
        if res.status_code != 200:
            sys.exit(f"GET {path}: {res.status_code} {res.text[:200]}")
        return elapsed

    sampler = RssSampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        latencies = np.array(list(pool.map(get, paths))) * 1000
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    return {
        "requests": len(paths),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "max_ms": float(latencies.max()),
        "req_per_s": len(paths) / wall,
        "rss_peak_mb": sampler.peak / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--max-pending", type=int, default=4, help="the server's --max-pending-uploads")
    ap.add_argument("--upload-px", type=int, default=2000, help="side of each uploaded JPEG")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="histokg-app-load-") as tmp:
        t0 = time.time()
        index, checkpoint = build_index(Path(tmp))
        print(f"index built in {time.time() - t0:.0f} s ({index})")
        from histokg.testing import free_port

        port = free_port(HOST)
        server = start_server(index, checkpoint, port, args.max_pending)
        base = f"http://{HOST}:{port}"
        try:
            import httpx

            paths = request_mix(base, args.requests)
            for path in paths[:20]:  # warm-up: model, overlays and thumbnails loaded once
                httpx.get(base + path, timeout=120)
            idle = phase(base, paths, args.workers, server.pid)

            jpeg = upload_jpeg(args.upload_px)
            feeder = Feeder(base, jpeg, mpp=0.5)
            with httpx.Client(timeout=60) as client:
                feeder.fill(client)  # every place taken before the reads start
            feeder.start()
            busy = phase(base, paths, args.workers, server.pid)
            feeder.stop.set()
            feeder.join()
            states = [httpx.get(f"{base}/api/uploads/{j}").json() for j in feeder.jobs]
        finally:
            server.terminate()
            server.wait(timeout=30)

    done = sum(s["status"] == "done" for s in states)
    print(
        f"\n{args.requests} mixed GETs, {args.workers} client threads, server on {HOST}:{port} "
        f"(one process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}); uploads: "
        f"{len(jpeg) // 1024} KB JPEG {args.upload_px} px at 0.5 um/px, {feeder.accepted} accepted, "
        f"{feeder.refused} refused (429, places full), {done} embedded during the phase\n"
    )
    print(f"{'phase':<16}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'req/s':>8}{'RSS peak MB':>13}")
    for name, r in (("idle", idle), ("uploads queued", busy)):
        print(
            f"{name:<16}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['max_ms']:>9.1f}"
            f"{r['req_per_s']:>8.1f}{r['rss_peak_mb']:>13.0f}"
        )
    ratio = {k: busy[k] / idle[k] for k in ("p50_ms", "p95_ms", "rss_peak_mb")}
    print(
        f"{'ratio':<16}{ratio['p50_ms']:>8.2f}x{ratio['p95_ms']:>8.2f}x{'':>9}{'':>8}"
        f"{ratio['rss_peak_mb']:>12.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"idle": idle, "uploads_queued": busy, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
