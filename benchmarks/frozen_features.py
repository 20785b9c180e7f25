"""Frozen image-tower throughput on the CPU: eager PyTorch vs channels_last vs the exported tower in ONNX
Runtime and OpenVINO, whole batches and micro-batches, in one process.

Run: PYTHONPATH=. .venv/bin/python benchmarks/frozen_features.py [--arch tf_efficientnet_lite0] [--px 224]
     [--batch 32] [--rounds 3] [--weights imagenet:tf_efficientnet_lite0] [--no-load] [--no-slide]
GPU: the same with ``--device cuda --batch 256`` (eager fp32, channels_last and bf16 autocast in PyTorch;
     part 4 of benchmarks/gpu/run.sh).

1. The same uint8 batch through (a) eager PyTorch, the whole batch in one forward pass (NCHW: the
   baseline), (b) the same backbone and input in channels_last memory format, (c) the Extractor with each
   backend (``torch``, ``onnx``: ONNX Runtime, ``openvino``), once with the whole batch in one pass and
   once as it runs by default, in micro-batches of :func:`histokg.runtime.cpu_micro_batch` patches. Best
   of ``--rounds`` interleaved rounds after a warm-up; prints images/s, the ratio to the baseline and
   the max |difference| to its features.
2. The same beside a fixed competing load (``--load`` busy-loop processes): ONNX Runtime with its default
   session options (threads = its own default, busy-wait spinning on) against histokg's ONNX Runtime and
   OpenVINO settings, and eager PyTorch; prints each one's slowdown (loaded time / idle time) and the
   share of its rate the load keeps while each runs (what spinning threads take from a neighbour on a
   shared machine).
3. Whole slide (CMU-1-Small-Region.svs and her2st C2 from the shared data, C2 both as a converted pyramid
   and as its plain JPEG, whose decoding then counts): tissue tiles at the patch geometry through
   ``spot_features`` (slide in, features out: reading, decoding, batching, the tower) against the bare
   tower on the same, already decoded patches, best of ``--rounds`` alternating rounds; prints the ratio.
Numbers only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histokg.features import Extractor
from histokg.runtime import INPUT, load_runner, usable_cpus


def busy_loop(counter) -> None:
    """The competing load: a pure-Python loop counting its iterations (its share of the CPUs)."""
    while True:
        for _ in range(10_000):
            pass
        counter.value += 1


def best_time(fns: dict, rounds: int) -> dict[str, float]:
    """Fastest wall time of each function over interleaved rounds (each warmed up once)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def channels_last_fn(extractor: Extractor, batch: np.ndarray):
    net = copy.deepcopy(extractor.backbone).eval().to(memory_format=torch.channels_last)
    mean, std = extractor.mean, extractor.std

    @torch.no_grad()
    def run() -> np.ndarray:
        x = torch.from_numpy(batch).to(extractor.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        return net(x).float().cpu().numpy()

    return run


def ort_default_session(path: str):
    """A session as ONNX Runtime makes it by default (its thread count, spinning on)."""
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def section_backends(extractors: dict[str, Extractor], batch: np.ndarray, rounds: int, bf16) -> None:
    first = next(iter(extractors.values()))
    eager = lambda: first._torch(batch)  # noqa: E731
    fns = {"eager (baseline)": eager, "channels_last": channels_last_fn(first, batch)}
    for name, ex in extractors.items():
        whole = copy.copy(ex)
        whole.micro_batch = 0
        fns[f"{name} whole batch"] = lambda whole=whole: whole(batch)
        if ex.pass_size:
            fns[f"{name} micro {ex.micro_batch}"] = lambda ex=ex: ex(batch)
    if bf16 is not None:
        fns["bf16 autocast"] = lambda: bf16._torch(batch)
    ref = eager()
    diffs = {name: float(np.abs(fn() - ref).max()) for name, fn in fns.items()}
    best = best_time(fns, rounds)
    n = len(batch)
    base = best["eager (baseline)"]
    print(f"\n1. same batch ({n} x {batch.shape[1]} px), best of {rounds} rounds")
    print(f"{'backend':<24}{'img/s':>10}{'vs eager':>10}{'max |diff|':>14}")
    for name in fns:
        print(f"{name:<24}{n / best[name]:>10.1f}{base / best[name]:>10.2f}{diffs[name]:>14.2e}")


def section_load(extractor: Extractor, batch: np.ndarray, rounds: int, n_load: int, path: str) -> None:
    default, tuned = ort_default_session(path), load_runner(path, "onnxruntime")
    openvino = load_runner(path, "openvino")
    step = extractor.micro_batch or len(batch)
    fns = {
        "eager torch": lambda: extractor._torch(batch),
        "ORT defaults": lambda: default.run(None, {INPUT: batch}),
        "ORT histokg": lambda: tuned(batch),
        "OpenVINO histokg": lambda: [openvino(batch[i : i + step]) for i in range(0, len(batch), step)],
    }
    idle = best_time(fns, rounds)
    counters = [mp.Value("q", 0, lock=False) for _ in range(n_load)]
    procs = [mp.Process(target=busy_loop, args=(c,), daemon=True) for c in counters]
    for p in procs:
        p.start()
    loaded, other = {}, {}
    try:
        time.sleep(1.0)
        alone_start, start = sum(c.value for c in counters), time.perf_counter()
        time.sleep(2.0)
        alone = (sum(c.value for c in counters) - alone_start) / (time.perf_counter() - start)
        for name, fn in fns.items():
            fn()
            count0, start, best = sum(c.value for c in counters), time.perf_counter(), float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            rate = (sum(c.value for c in counters) - count0) / (time.perf_counter() - start)
            loaded[name], other[name] = best, rate / alone
    finally:
        for p in procs:
            p.terminate()
            p.join()
    n = len(batch)
    print(f"\n2. beside {n_load} busy-loop process(es) (ORT defaults: its own thread count, spinning on)")
    print(f"{'runner':<18}{'idle img/s':>12}{'loaded img/s':>14}{'slowdown':>10}{'load keeps':>12}")
    for name in fns:
        print(
            f"{name:<18}{n / idle[name]:>12.1f}{n / loaded[name]:>14.1f}{loaded[name] / idle[name]:>10.2f}"
            f"{other[name]:>11.0%}"
        )
    print("(load keeps: the busy loop's rate while the runner runs, over its rate with the runner idle)")


def section_slide(extractor: Extractor, px: int, batch_size: int, rounds: int) -> None:
    from histokg.features import spot_features
    from histokg.st.dataset import SpotPatchDataset
    from histokg.st.pairing import PairingConfig
    from histokg.testing import shared_data_dir
    from histokg.tl.embed import tile_adata
    from histokg.wsi import convert

    data = shared_data_dir()
    pairing = PairingConfig(patch_um=px * 0.5, patch_px=px)
    print(
        f"\n3. whole slide: tissue tiles of {px} px at 0.5 um/px ({extractor.backend}), best of {rounds} rounds"
    )
    print(
        f"{'slide':<44} {'tiles':>6} {'slide->features/s':>18} {'bare tower img/s':>17} {'ratio':>6} {'max|diff|':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        jpeg = data / "her2st" / "images" / "C2_HE.jpg"
        with contextlib.redirect_stderr(io.StringIO()):
            pyramid = convert(jpeg, Path(tmp) / "C2.tiff", mpp=0.7368, progress=False)
        slides = [
            ("CMU-1-Small-Region.svs", data / "wsi" / "CMU-1-Small-Region.svs", None),
            ("her2st C2 (JPEG converted to a pyramid)", pyramid, None),
            ("her2st C2 plain JPEG (decoded in the loop)", jpeg, 0.7368),
        ]
        for name, slide, mpp in slides:
            adata = tile_adata(slide, pairing, mpp=mpp, min_tissue=0.25)
            ds = SpotPatchDataset(adata, pairing, expression=np.zeros((adata.n_obs, 0), np.float32))
            try:
                patches = np.stack([ds.read_image(i) for i in range(adata.n_obs)])
            finally:
                ds.close()
            whole, tower = [], []
            for _ in range(rounds):  # alternating, so a shared machine's load falls on both alike
                start = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()):  # the numbers, not the progress bar
                    feats = spot_features(adata, extractor, pairing, batch_size=batch_size).tower[0]
                whole.append(time.perf_counter() - start)
                start = time.perf_counter()
                bare = np.concatenate(
                    [extractor(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)]
                )
                tower.append(time.perf_counter() - start)
            n = adata.n_obs
            print(
                f"{name:<44} {n:>6} {n / min(whole):>18.1f} {n / min(tower):>17.1f} "
                f"{min(tower) / min(whole):>6.2f} {np.abs(feats - bare).max():>10.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet:tf_efficientnet_lite0", help="'' for a random init")
    parser.add_argument("--px", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=int, default=1, help="busy-loop processes for section 2")
    parser.add_argument("--no-load", action="store_true")
    parser.add_argument("--no-slide", action="store_true")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (eager, channels_last, ONNX Runtime, OpenVINO) or cuda (eager fp32, channels_last, bf16 autocast; "
        "no exported towers and no competing-load section: those are about CPU threads)",
    )
    args = parser.parse_args()
    gpu = args.device != "cpu"

    print(
        f"machine: {os.cpu_count()} CPUs, usable {usable_cpus()}, torch {torch.__version__} threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}"
    )
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, args.px, args.px, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        weights = args.weights or None
        backends = ["torch"] if gpu else ["torch", "onnx", "openvino"]
        extractors = {
            name: Extractor.create(args.arch, weights, device=args.device, backend=name, model_dir=tmp)
            for name in backends
        }
        for ex in extractors.values():
            ex(batch[:1])
        extractor = extractors[backends[-1]]
        bf16 = None
        if gpu:
            bf16 = Extractor.create(
                args.arch, weights, device=args.device, dtype=torch.bfloat16, backend="torch"
            )
            print(f"device {torch.cuda.get_device_name(args.device)}")
        print(
            f"{args.arch} ({args.weights or 'random init'}, {', '.join(backends)}): export + probe + sessions "
            f"{time.perf_counter() - start:.1f} s"
        )
        section_backends(extractors, batch, args.rounds, bf16)
        if not args.no_load and not gpu:
            (path,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs if f.endswith(".onnx")]
            section_load(extractor, batch, args.rounds, args.load, path)
        if not args.no_slide:
            section_slide(extractor, args.px, args.batch, args.rounds)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
