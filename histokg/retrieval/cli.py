"""``histokg index build|add|query|evaluate|info|verify`` (registered in histokg.cli)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import click

from histokg.devices import check_device
from histokg.errors import InputError
from histokg.retrieval.descriptors import descriptor_names, get_descriptor

logging.getLogger("faiss").setLevel(logging.WARNING)  # which SIMD build loaded is not news

SCHEDULER_HELP = (
    "Dask scheduler: 'processes' (default: a local cluster of worker processes), 'threads', 'sync' "
    "(no cluster), or the address of a running scheduler (tcp://host:8786)."
)


def _specs(inputs, table, patient, mpp):
    from histokg.retrieval.shards import specs_from_paths, specs_from_table

    specs = specs_from_table(table) if table else []
    if inputs:
        specs += specs_from_paths(list(inputs), patient=patient, mpp=mpp)
    if not specs:
        raise InputError("no slides given: pass slide files, .h5ad files, study folders or --table")
    ids = [s.slide_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(f"slide ids {dupes} occur more than once among the inputs")
    return specs


def _common(f):
    opts = [
        click.argument("inputs", nargs=-1, type=click.Path(exists=True, path_type=Path)),
        click.option(
            "--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
        ),
        click.option(
            "--table",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="CSV/TSV of slides: path[, slide_id, kind, library_id, patient, mpp, label columns...].",
        ),
        click.option("--patient", help="Patient of all INPUTS (for leave-one-patient-out queries)."),
        click.option("--mpp", type=float, help="Microns per pixel of plain-image INPUTS."),
        click.option(
            "--bundle",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="KG bundle for KG activations (default: the checkpoint's, found beside it; the build stops if it is not there).",
        ),
        click.option("--scheduler", default="processes", show_default=True, help=SCHEDULER_HELP),
        click.option(
            "--workers", type=click.IntRange(1, 256), help="Local Dask workers (default: CPU cores)."
        ),
        click.option(
            "--device",
            default="cpu",
            show_default=True,
            callback=lambda ctx, param, value: check_device(value),
            help="auto, cpu, cuda or cuda:N.",
        ),
        click.option(
            "--feature-cache",
            type=click.Path(file_okay=False, path_type=Path),
            help="Folder for the image tower's features (content-addressed): a rebuild skips the tower.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group("index")
def index() -> None:
    """Slide-level retrieval index: build, add slides, query, evaluate, verify."""


@index.command("build")
@_common
@click.option(
    "-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Index folder."
)
@click.option("--kind", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default="auto", show_default=True)
@click.option("--prototypes", "n_prototypes", type=click.IntRange(2, 4096), default=16, show_default=True)
@click.option(
    "--overwrite", is_flag=True, help="Replace an index already in OUT (finished shards are reused)."
)
def build_cmd(
    inputs,
    checkpoint,
    table,
    patient,
    mpp,
    bundle,
    scheduler,
    workers,
    device,
    feature_cache,
    out,
    kind,
    n_prototypes,
    overwrite,
):
    """Embed INPUTS (slides, .h5ad files, study folders) one Dask task per slide and index them in OUT.

    Resumable: run it again after a kill and finished slides are not embedded again."""
    from histokg.retrieval.build import build_index

    specs = _specs(inputs, table, patient, mpp)
    idx = build_index(
        specs,
        checkpoint,
        out,
        kind=kind,
        n_prototypes=n_prototypes,
        scheduler=_sched(scheduler),
        n_workers=workers,
        bundle=bundle,
        device=device,
        feature_cache=feature_cache,
        overwrite=overwrite,
    )
    click.echo(
        f"index {out}: {len(idx.slide_ids)} slides, {idx.n_regions} regions ({idx.kind}), checkpoint {idx.checkpoint_sha256[:12]}"
    )


@index.command("add")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
def add_cmd(
    index_dir, inputs, checkpoint, table, patient, mpp, bundle, scheduler, workers, device, feature_cache
):
    """Embed INPUTS and add them to the index in INDEX_DIR without a rebuild (same checkpoint only)."""
    from histokg.retrieval.build import add_to_index

    specs = _specs(inputs, table, patient, mpp)
    idx = add_to_index(
        index_dir,
        specs,
        checkpoint,
        scheduler=_sched(scheduler),
        n_workers=workers,
        bundle=bundle,
        device=device,
        feature_cache=feature_cache,
    )
    click.echo(
        f"index {index_dir}: added {len(specs)} slides; now {len(idx.slide_ids)} slides, {idx.n_regions} regions"
    )


def _sched(value: str) -> str | None:
    return None if value == "processes" else value


@index.command("query")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--slide", help="Query slide id (similar slides, or the slide of --box).")
@click.option("--box", help="A region on --slide: x0,y0,x1,y1 (similar regions).")
@click.option(
    "--units",
    type=click.Choice(["px", "um"]),
    default="px",
    show_default=True,
    help="Units of --box (level-0 pixels or microns).",
)
@click.option("--target", help="Search regions of this slide only.")
@click.option("--pathway", help="Pathway or cell-type name or KG id: slides ranked by its activation.")
@click.option("--within", help="With --pathway: only regions with this label (e.g. 'invasive carcinoma').")
@click.option(
    "--descriptor",
    default="mean",
    show_default=True,
    callback=lambda ctx, param, value: get_descriptor(value).name,  # the naming rule; unknown: one line
    help=f"Slide descriptor of similar slides: {', '.join(descriptor_names())} (histokg.retrieval.descriptors).",
)
@click.option("--exclude-patient", is_flag=True, help="Leave out the query's patient.")
@click.option("-k", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def query_cmd(index_dir, slide, box, units, target, pathway, within, descriptor, exclude_patient, k, as_json):
    """Query INDEX_DIR by slide, by region (--slide with --box) or by pathway name."""
    from histokg.retrieval import query as q
    from histokg.retrieval.index import RetrievalIndex

    idx = RetrievalIndex.load(index_dir)
    if pathway:
        res = q.slides_by_entity(idx, pathway, k=k, within=within)
        rows = [
            f"{r['slide_id']}\t{r['score']:.4f}\t{r['source']}\t{r['n_regions']} regions"
            for r in res["results"]
        ]
        head = f"slides by {res['label']} ({res['entity']})" + (f" within {within!r}" if within else "")
    elif slide and box:
        res = q.similar_regions(idx, slide, q.Box(*_box(box), units=units), k=k, target_slide=target)
        rows = [
            f"{r['slide_id']}\t{r['x']:.0f},{r['y']:.0f}\t{r['score']:.4f}\t{r.get('label', '')}"
            for r in res["results"]
        ]
        head = f"regions like {box} {units} on {slide} ({len(res['query']['regions'])} regions in the box)"
    elif slide:
        res = q.similar_slides(idx, slide, k=k, descriptor=descriptor, exclude_patient=exclude_patient)
        rows = [f"{r['slide_id']}\t{r['score']:.4f}\t{json.dumps(r['labels'])}" for r in res]
        head = f"slides like {slide} ({descriptor} descriptor)"
    else:
        raise InputError("give --slide (similar slides), --slide with --box (similar regions) or --pathway")
    click.echo(json.dumps(res, indent=2) if as_json else "\n".join([head, *rows]))


def _box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"--box {text!r}: expected four numbers x0,y0,x1,y1")
    return values  # type: ignore[return-value]


@index.command("evaluate")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--label", required=True, help="Slide label that defines relevance (a column of the slide table)."
)
@click.option(
    "--regions", "with_regions", is_flag=True, help="Also region-level retrieval over region labels."
)
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics as JSON."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def evaluate_cmd(index_dir, label, with_regions, out, overwrite):
    """mMV@5, mAP and hit@k of every slide descriptor (leave-one-slide/patient-out)."""
    from histokg.io import check_output_file, write_json
    from histokg.retrieval.evaluate import region_retrieval_metrics, slide_retrieval_metrics
    from histokg.retrieval.index import RetrievalIndex

    if out:
        check_output_file(out, "metrics file", overwrite=overwrite)
    idx = RetrievalIndex.load(index_dir)
    results = {}
    for desc in descriptor_names():
        if idx.descriptor(desc).available():  # e.g. kg needs KG activations
            results[desc] = slide_retrieval_metrics(idx, label=label, descriptor=desc)
    if with_regions:
        results["regions"] = region_retrieval_metrics(idx)
    click.echo(format_metrics(results))
    if out:
        write_json(out, results)


def format_metrics(results: dict) -> str:
    """One line per evaluation; a metric that was not computed (e.g. mAP of region retrieval) shows n/a."""

    def fmt(value) -> str:
        return f"{value:6.3f}" if isinstance(value, int | float) and math.isfinite(value) else f"{'n/a':>6s}"

    width = max([18, *map(len, results)])
    lines = [
        f"{'':{width}s} {'mMV@5':>6s} {'mAP':>6s} {'hit@1':>6s} {'hit@3':>6s} {'hit@5':>6s}  queries  protocol"
    ]
    for name, m in results.items():
        cells = " ".join(fmt(m.get(key)) for key in ("mMV@5", "mAP", "hit@1", "hit@3", "hit@5"))
        lines.append(f"{name:{width}s} {cells}  {m['n_queries']:7d}  {m['protocol']}")
    return "\n".join(lines)


@index.command("info")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def info_cmd(index_dir):
    """Slides, regions, kind and checkpoint of an index."""
    from histokg.retrieval.index import RetrievalIndex

    idx = RetrievalIndex.load(index_dir)
    click.echo(
        f"{index_dir}: {len(idx.slide_ids)} slides, {idx.n_regions} regions, {idx.kind} index, "
        f"checkpoint {idx.checkpoint_sha256[:12]} ({idx.manifest.get('checkpoint', '')})"
    )
    for s in idx.manifest["slides"]:
        click.echo(
            f"  {s['slide_id']}\t{s['kind']}\t{s['n_regions']} regions\tpatient={s.get('patient')}\t{json.dumps(s.get('labels', {}))}"
        )


@index.command("verify")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--repair",
    is_flag=True,
    help="Fix what can be fixed without the slides: the pointer, the FAISS index and descriptors "
    "(rebuilt from the shards), leftovers of killed changes; migrate an index written before generations.",
)
def verify_cmd(index_dir, repair):
    """Check every file of the index in INDEX_DIR; one line per problem, exit status 2 when it is broken."""
    from histokg.retrieval.verify import repair_index, verify_index

    if repair:
        done, report = repair_index(index_dir)
        for line in done:
            click.echo(f"repaired: {line}")
    else:
        report = verify_index(index_dir)
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.ok:
        where = report.generation or "written before generations"
        click.echo(f"index {index_dir} ({where}): {report.n_slides} slides, {report.n_regions} regions: OK")
        return
    for line in report.lines():
        click.echo(line)
    if report.repairable and not repair:
        hint = f"`histokg index verify {index_dir} --repair` can repair it"
    else:
        hint = (
            "it cannot be repaired without the slides: rebuild it from its slides (histokg index build "
            "--overwrite embeds again only the slides whose shards are damaged)"
        )
    raise InputError(f"index {index_dir} is broken ({len(report.problems)} problem(s) above); {hint}")
