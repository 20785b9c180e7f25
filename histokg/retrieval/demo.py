"""The retrieval step of ``make demo``: an index over the synthetic study and slides of known mixes.

:func:`build_demo_index` is called by the demo pipeline with its output folder, a trained checkpoint
and the study folder. It writes ``<out_dir>/retrieval/mix/`` (whole slides of three phenotype mixes,
no transcriptomics) and ``<out_dir>/index/`` (the study's sections as spots with expression and KG
activations, plus the mix slides as tissue tiles; one Dask task per slide on a local cluster),
evaluates slide retrieval of the mixes and region retrieval of the study's planted regions, and
returns the lines to print, ending with how to start the app.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from histokg.io import write_json

log = logging.getLogger(__name__)


def build_demo_index(
    out_dir: str | Path,
    checkpoint: str | Path,
    study_dir: str | Path,
    *,
    per_mix: int = 4,
    scheduler: str | None = None,
    bundle: str | Path | None = None,
) -> str:
    """Build ``<out_dir>/index`` and return a printable summary (metrics, and how to start the app).

    ``bundle``: the KG bundle for KG activations (default: the one the checkpoint was trained with).
    """
    from histokg.retrieval.build import build_index
    from histokg.retrieval.cli import format_metrics
    from histokg.retrieval.descriptors import region_descriptor_names
    from histokg.retrieval.evaluate import region_retrieval_metrics, slide_retrieval_metrics
    from histokg.retrieval.shards import specs_from_paths, specs_from_table
    from histokg.retrieval.synthetic import MixSlidesConfig, generate_mix_slides

    out_dir = Path(out_dir)
    start = time.perf_counter()
    table = generate_mix_slides(out_dir / "retrieval" / "mix", MixSlidesConfig(per_mix=per_mix))
    specs = specs_from_paths([study_dir], patient="synthetic-study") + specs_from_table(table)
    index_dir = out_dir / "index"
    index = build_index(specs, checkpoint, index_dir, scheduler=scheduler, bundle=bundle, overwrite=True)
    results = {  # the mix slides have no transcriptomics: the descriptors of region vectors alone
        f"slides/{d}": slide_retrieval_metrics(index, label="mix", descriptor=d)
        for d in region_descriptor_names()
    }
    results["regions (study)"] = region_retrieval_metrics(index)
    write_json(index_dir / "evaluation.json", results)
    seconds = time.perf_counter() - start
    lines = [
        f"  retrieval index: {index_dir} ({len(index.slide_ids)} slides, {index.n_regions} regions, "
        f"{index.kind}; {seconds:.0f} s)",
        f"  slide retrieval of {per_mix} slides per phenotype mix (labels: mix), regions of the study "
        "(labels: planted region):",
        *("  " + line for line in format_metrics(results).splitlines()),
        "",
        f"  the web app: {histokg_command()} serve {index_dir}   then open http://127.0.0.1:8000/",
    ]
    return "\n".join(lines)


def histokg_command() -> str:
    """How to run ``histokg`` here: the script beside this Python (a venv's ``bin/histokg``, wherever the
    package is installed), plain ``histokg`` when that is the one on PATH or there is none."""
    beside = Path(sys.executable).with_name("histokg")
    if not beside.is_file() or shutil.which("histokg") == str(beside):
        return "histokg"
    return str(beside)
