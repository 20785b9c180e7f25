"""Peak memory of ``histokg predict`` per slide, printed beside the slide's decoded size.

Each slide is predicted in its own process (``python -m histokg.cli predict``); its peak resident set
size comes from ``os.wait4`` (``ru_maxrss``). The baseline is the same interpreter loading the CLI
(torch, scanpy, ...) and doing nothing: the difference is what the slide, its tiles and the model cost.
Decoded size = width x height x 3 bytes of level 0 (what a plain JPEG/PNG costs in memory, since it is
decoded whole; an OpenSlide pyramid is read region by region).

Run (a checkpoint and a reference embedded with it, e.g. the her2st run of the README):
``python benchmarks/predict_memory.py --checkpoint best.pt --reference ref.h5ad``
(default slides: her2st C2's JPEG at 0.7368 um/px and CMU-1-Small-Region.svs from the shared data;
``--slide PATH[:MPP]`` for others; ``--spots hex`` for pseudo-spots).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> tuple[int, float, float, str]:
    """(exit status, peak RSS in MiB, seconds, last output line) of ``python -m histokg.cli ARGS``."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "histokg.cli", "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    lines = [line for line in out.splitlines() if line.strip()]
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, seconds, lines[-1] if lines else ""


def slide_size(path: Path, mpp: float | None) -> tuple[int, int]:
    sys.path.insert(0, str(REPO))
    from histokg.wsi import slide_dimensions

    return slide_dimensions(path, mpp=mpp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--slide", action="append", help="PATH or PATH:MPP (repeatable)")
    parser.add_argument("--spots", default="tiles", choices=["tiles", "hex"])
    parser.add_argument("--batch-size", default="64")
    ns = parser.parse_args()
    if ns.slide:
        slides = [
            (Path(s.rsplit(":", 1)[0]), float(s.rsplit(":", 1)[1])) if ":" in s else (Path(s), None)
            for s in ns.slide
        ]
    else:
        sys.path.insert(0, str(REPO))
        from histokg.testing import shared_data_dir

        data = shared_data_dir()
        slides = [
            (data / "her2st" / "images" / "C2_HE.jpg", 0.7368),
            (data / "wsi" / "CMU-1-Small-Region.svs", None),
        ]
    code, base, _, _ = run(["predict", "--help"])
    print(f"baseline (the CLI loaded, nothing run): peak RSS {base:.0f} MiB")
    print(
        f"{'slide':<28} {'level 0 (px)':>14} {'decoded MiB':>12} {'peak RSS MiB':>13} {'over baseline':>14} {'s':>6}  result"
    )
    for path, mpp in slides:
        w, h = slide_size(path, mpp)
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                "predict",
                str(path),
                "--checkpoint",
                ns.checkpoint,
                "--reference",
                ns.reference,
                "-o",
                tmp,
            ]
            args += [
                "--spots",
                ns.spots,
                "--batch-size",
                ns.batch_size,
                *(["--mpp", str(mpp)] if mpp else []),
            ]
            code, peak, seconds, last = run(args)
        decoded = w * h * 3 / 2**20
        result = last if code == 0 else f"exit {code}: {last}"
        print(
            f"{path.name:<28} {f'{w}x{h}':>14} {decoded:>12.0f} {peak:>13.0f} {peak - base:>14.0f} {seconds:>6.0f}  {result}"
        )


if __name__ == "__main__":
    main()
