"""kNN expression prediction: the dense all-pairs similarity matrix (histokg before faiss) vs faiss.

For 10^3, 10^4 and 10^5 reference spots (random L2-normalised embeddings, gamma "expression" of a
256-gene panel), both predict the same queries with ``k=10``, ``temperature=0.1``. Printed: wall time
and peak extra memory of each (the kernel's peak resident set size during the call above the
resident size before it; Linux), their ratios, how many queries get the same neighbours from both
(the similarities agree to float32 rounding, so a near-tie at the k-th place, within ~1e-7, may
resolve either way) and the largest prediction difference. Both run in this one process, on the
same data, one after the other, with the same thread count.

Run: ``python benchmarks/knn.py [--sizes 1000 10000 100000] [--queries 2000] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import ctypes
import time

import numpy as np
import torch

from histokg.metrics import knn_predict, knn_search


def dense_knn_predict(query, reference, values, k=10, temperature=0.1):
    """What histokg.metrics.knn_predict computed before: every query-reference similarity at once."""
    q = torch.as_tensor(query, dtype=torch.float32)
    r = torch.as_tensor(reference, dtype=torch.float32)
    vals = torch.as_tensor(values, dtype=torch.float32)
    sims = q @ r.T  # (n_query, n_reference)
    top, idx = sims.topk(min(k, r.shape[0]), dim=1)
    weights = torch.softmax(top / temperature, dim=1)
    return (weights.unsqueeze(-1) * vals[idx]).sum(dim=1).numpy(), idx.numpy()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(fn):
    """(result, seconds, peak extra bytes) of ``fn()``: the kernel's peak resident set size (VmHWM),
    reset just before the call (``/proc/self/clear_refs``), above the resident size at that moment;
    freed heap memory is handed back first (``malloc_trim``) so that reuse does not hide an allocation."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current VmRSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, (_status_kib("VmHWM") - base) * 1024


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--genes", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=(args.queries, args.dim)))
    print(
        f"kNN prediction of {args.queries} queries, {args.dim}-d embeddings, {args.genes} genes, k=10, "
        f"{args.threads} thread(s)"
    )
    print(f"{'reference':>10s} {'dense s':>9s} {'faiss s':>9s} {'time x':>7s} {'dense MiB':>10s} {'faiss MiB':>10s} "
          f"{'memory x':>9s}  same neighbours  max |pred diff|")  # fmt: skip
    for n in args.sizes:
        ref = unit(rng.normal(size=(n, args.dim)))
        values = rng.gamma(1.0, size=(n, args.genes)).astype(np.float32)
        knn_predict(query[:64], ref, values)  # warm up both code paths (faiss uses BLAS from 20 queries)
        dense_knn_predict(query[:64], ref, values)
        (dense, dense_idx), t_dense, m_dense = measure(lambda: dense_knn_predict(query, ref, values))  # noqa: B023
        new, t_new, m_new = measure(lambda: knn_predict(query, ref, values))  # noqa: B023
        same = int((knn_search(query, ref, 10)[1] == dense_idx).all(axis=1).sum())
        mib = 2**20
        print(
            f"{n:10d} {t_dense:9.3f} {t_new:9.3f} {t_dense / t_new:7.2f} {m_dense / mib:10.1f} {m_new / mib:10.1f} "
            f"{m_dense / max(m_new, 4096):9.1f}  {f'{same}/{len(query)}':>15s}  {np.abs(dense - new).max():.2g}"
        )
    print("time x, memory x: dense / faiss (above 1: faiss is faster / smaller); max |pred diff| over all")


if __name__ == "__main__":
    main()
