"""``histokg bench``: every contrastive loss, with and without KG priors, and baselines, on real sections
under one held-out-section protocol (see :mod:`histokg.bench.run`)."""

from histokg.bench.config import BenchConfig

__all__ = ["BenchConfig", "run_bench"]


def run_bench(*args, **kwargs):
    from histokg.bench.run import run_bench as _run

    return _run(*args, **kwargs)
