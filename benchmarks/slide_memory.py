"""Peak memory of converting and of embedding a plain whole-section JPEG, beside its decoded size.

Run: PYTHONPATH=. .venv/bin/python benchmarks/slide_memory.py [--slide PATH:MPP] [--batch 64]

Each job runs in its own process; its peak resident set size comes from ``os.wait4`` (``ru_maxrss``).
The baseline is the same job on a 3072-px crop of the same JPEG (27 MiB decoded; tissue tiles for
several full batches, since an engine's memory arena may grow until the second full batch), so the
difference is what the section's size costs beyond the interpreter, torch, the inference engine (the
default backend: OpenVINO), the tower and its activations. The ratio printed is conservative:
(peak - baseline + the crop's decoded size) / decoded. Decoded size = width x height x 3 bytes (level 0 held as RGB).

Jobs:
- ``convert``: ``histokg.wsi.convert`` (the ``histokg convert`` command) to a pyramidal TIFF.
- ``features``: the frozen-tower features of every tissue tile (``tl.tile_adata`` at the default
  112 um / 224 px geometry, then ``features.spot_features`` with the ImageNet EfficientNet-Lite0 tower,
  the path ``histokg embed``, ``embed_slide``, ``predict`` and the app's uploads go through).

Default slide: her2st C2's 9274 x 9911 px H&E JPEG at 0.7368 um/px from the shared data. Numbers only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_PX = 3072  # the baseline crop: tissue tiles for several full batches of 64


def child(job: str, slide: str, mpp: float, out_dir: str, batch: int) -> None:
    if job == "crop":
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(slide) as img:
            x0, y0 = (img.width - BASE_PX) // 2, (img.height - BASE_PX) // 2
            img.crop((x0, y0, x0 + BASE_PX, y0 + BASE_PX)).save(out_dir, quality=90)
        return
    if job == "convert":
        from histokg.wsi import convert

        convert(slide, Path(out_dir) / "out.tiff", mpp=mpp, progress=False)
        return
    from histokg.features import Extractor, spot_features
    from histokg.st.pairing import PairingConfig
    from histokg.tl.embed import tile_adata

    pairing = PairingConfig()
    extractor = Extractor.create(
        "tf_efficientnet_lite0", "imagenet:tf_efficientnet_lite0", backend="auto", model_dir=out_dir
    )
    adata = tile_adata(slide, pairing, mpp=mpp)
    spot_features(adata, extractor, pairing, batch_size=batch)


def run(job: str, slide: Path, mpp: float, batch: int) -> float:
    """Peak RSS (MiB) of one job in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
        cmd = [sys.executable, __file__, "--child", job, "--slide", f"{slide}:{mpp}", "--out", tmp]
        proc = subprocess.Popen([*cmd, "--batch", str(batch)], env=env, stderr=subprocess.PIPE)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{job} on {slide} failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", help="PATH:MPP of a plain JPEG/PNG")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--child", choices=["crop", "convert", "features"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slide:
        path, mpp = Path(args.slide.rsplit(":", 1)[0]), float(args.slide.rsplit(":", 1)[1])
    else:
        sys.path.insert(0, str(REPO))
        from histokg.testing import shared_data_dir

        path, mpp = shared_data_dir() / "her2st" / "images" / "C2_HE.jpg", 0.7368
    if args.child:
        child(args.child, str(path), mpp, args.out, args.batch)
        return
    from PIL import Image

    with Image.open(path) as img:  # the header only
        width, height = img.size
    decoded = width * height * 3 / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        # the crop is cut in a child too: a child forked from a parent that had decoded the section
        # would report the parent's pages in its own peak RSS
        small = Path(tmp) / "small.jpg"
        subprocess.run(
            [sys.executable, __file__, "--child", "crop", "--slide", f"{path}:{mpp}", "--out", str(small)],
            check=True,
        )
        base_mib = BASE_PX * BASE_PX * 3 / 2**20
        print(f"{path.name}: {width} x {height} px, decoded {decoded:.0f} MiB; batch {args.batch}")
        print(f"baseline: the same job on its central {BASE_PX} px crop ({base_mib:.0f} MiB decoded)")
        print(
            f"{'job':<10} {'baseline MiB':>13} {'peak MiB':>9} {'over baseline':>14} {'(over + crop) / decoded':>24}"
        )
        for job in ("convert", "features"):
            base = run(job, small, mpp, args.batch)
            peak = run(job, path, mpp, args.batch)
            over = peak - base
            print(f"{job:<10} {base:>13.0f} {peak:>9.0f} {over:>14.0f} {over / decoded:>9.2f}x")


if __name__ == "__main__":
    main()
