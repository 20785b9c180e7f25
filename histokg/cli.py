"""The ``histokg`` command line. Thin: each subcommand parses options and calls the library."""

from __future__ import annotations

import errno
import inspect
import logging
import sys
from pathlib import Path

import click

from histokg.devices import check_device
from histokg.errors import HistokgError
from histokg.io import holding_lock
from histokg.keys import Key, SData

log = logging.getLogger("histokg")

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML config file."
)
DEVICE_OPTION = click.option(
    "--device",
    default=None,
    callback=lambda ctx, param, value: check_device(value),  # one line for a device this machine lacks
    help="auto, cpu, cuda, cuda:N (default: auto, the GPU if there is one).",
)


def embedding_options(fn):
    """``--batch-size``, ``--num-workers`` and ``--device`` of the commands that embed patches."""
    fn = DEVICE_OPTION(fn)
    fn = click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True)(fn)
    return click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)(fn)


SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (dotted path); repeatable.",
)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in (
        "PIL",
        "matplotlib",
        "numba",
        "fsspec",
        "h5py",
        "urllib3",
        "ome_zarr",
        "spatialdata",
        "distributed",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pathways_kg.cli import quiet_pykeen

    quiet_pykeen(verbose)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnx", "openvino"]),
    default=None,
    envvar="HISTOKG_FEATURE_BACKEND",
    help="Frozen image towers on the CPU: exported to ONNX and run by OpenVINO (openvino) or ONNX Runtime "
    "(onnx), or PyTorch (torch); auto: OpenVINO, else ONNX Runtime, where they can run "
    "[env HISTOKG_FEATURE_BACKEND; default auto].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads of torch, OpenVINO and ONNX Runtime (default: the CPUs this process may use).",
)
@click.version_option(package_name="histokg")
def cli(verbose: int, quiet: bool, backend: str | None, threads: int | None) -> None:
    """histokg: align H&E whole-slide images with spatial transcriptomics, guided by a knowledge graph."""
    import os

    from histokg.features import BACKEND_ENV
    from histokg.runtime import configure_threads

    _setup_logging(verbose, quiet)
    configure_threads(threads)
    if backend:
        os.environ[BACKEND_ENV] = backend  # every Extractor of this process (and its workers) reads it


# --------------------------------------------------------------------------- data


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@CONFIG_OPTION
@SET_OPTION
@click.option("--overwrite", is_flag=True, help="Replace a study already in OUT_DIR.")
@holding_lock("out_dir", "histokg synth", label="study folder")
def synth(out_dir: Path, config_path: Path | None, overrides: tuple[str, ...], overwrite: bool) -> None:
    """Write a synthetic Visium-like study with planted truth to OUT_DIR."""
    from histokg.config import load_config
    from histokg.synth import SynthConfig, generate_study
    from histokg.synth.study import prepare_study_dir

    cfg = load_config(SynthConfig, config_path, overrides)
    prepare_study_dir(out_dir, overwrite=overwrite, inputs=[config_path])
    manifest = generate_study(out_dir, cfg)
    click.echo(f"synthetic study: {manifest}")


@cli.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mpp", type=float, help="Microns per pixel of SRC (required for plain images).")
@click.option("--tile", type=int, default=256, show_default=True, help="Tile size in pixels.")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality of the tiles.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@holding_lock("dst", "histokg convert", folder=False, label="pyramid")
def convert(src: Path, dst: Path, mpp: float | None, tile: int, quality: int, overwrite: bool) -> None:
    """Write SRC (a plain image or any slide) as a pyramidal tiled TIFF with MPP that OpenSlide reads."""
    from histokg.io import check_output_file
    from histokg.wsi import convert as convert_image

    check_output_file(dst, "pyramid", overwrite=overwrite, inputs=[src])
    out = convert_image(src, dst, mpp=mpp, tile=tile, quality=quality)
    click.echo(f"pyramid: {out}")


@cli.command()
@click.argument("slide", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mpp", type=float, help="Override or supply the slide's microns per pixel.")
@CONFIG_OPTION
@SET_OPTION
@click.option("--overwrite", is_flag=True, help="Replace this slide's tiling if OUT_DIR already holds it.")
@holding_lock("out_dir", "histokg tile", label="tile folder")
def tile(
    slide: Path,
    out_dir: Path,
    mpp: float | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Tissue mask and grid tiling of SLIDE into OUT_DIR: CLAM-style coordinates SLIDE.h5, an overlay
    SLIDE_tiles.png and the settings SLIDE_tiling_config.yaml (one set per slide: many slides may share
    OUT_DIR; a slide's own files are replaced only with --overwrite)."""
    from histokg.config import load_config, save_config
    from histokg.io import check_path_length, claim_output_dir
    from histokg.wsi import (
        TilingConfig,
        detect_tissue,
        open_slide,
        save_png,
        save_tiles_h5,
        tile_slide,
        tiles_overlay,
    )

    cfg = load_config(TilingConfig, config_path, overrides)
    names = [f"{slide.stem}{suffix}" for suffix in (".h5", "_tiles.png", "_tiling_config.yaml")]
    for name in names:
        check_path_length(out_dir / name, "tiling output")  # every name fits before any is written
    claim_output_dir(
        out_dir,
        names,
        what=f"a tiling of a slide named {slide.stem}",
        overwrite=overwrite,
        label="tile folder",
        inputs=[slide, config_path],
    )
    with open_slide(slide, mpp=mpp) as s:
        mask = detect_tissue(s, cfg.mask)
        tiles = tile_slide(s, cfg, mask)
        h5 = save_tiles_h5(tiles, out_dir / names[0])
        png = save_png(tiles_overlay(tiles, mask), out_dir / names[1])
    save_config(cfg, out_dir / names[2])
    click.echo(f"{len(tiles)} tiles -> {h5}\noverlay -> {png}")


class _ReaderGroup(click.Group):
    """``histokg read TECH``: one subcommand per reader in the registry (histokg.st.readers), loaded on use.

    TECH follows the registry's naming rule (``Visium_HD`` is ``visium-hd``); an unknown one is one
    error naming the nearest readers.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        from histokg.st.readers import reader_names

        return reader_names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from histokg.st.readers import get_reader, reader_registry

        if ctx.resilient_parsing and cmd_name not in reader_registry:
            return None  # shell completion of a partial name
        return reader_command(get_reader(cmd_name))  # an unknown name: one error with the nearest names

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else name), command, rest  # usage shows the registered name


# what each kind of reader Input is on the command line (histokg.st.reader.INPUT_KINDS)
_INPUT_TYPES = {
    "dir": lambda: click.Path(exists=True, file_okay=False, path_type=Path),
    "file": lambda: click.Path(exists=True, dir_okay=False, path_type=Path),
    "float": lambda: float,
    "int": lambda: int,
    "str": lambda: str,
}


def reader_params(reader_cls) -> list[click.Parameter]:
    """The click parameters of a reader's inputs (``Reader.cli_inputs``), as its ``__init__`` takes them.

    An input ``__init__`` takes by position without a default is an argument; any other is an option,
    required when ``__init__`` gives it no default, with that default otherwise.
    """
    signature = inspect.signature(reader_cls).parameters
    params: list[click.Parameter] = []
    for spec in reader_cls.cli_inputs():
        param = signature[spec.name]
        kind = _INPUT_TYPES[spec.kind]()
        has_default = param.default is not inspect.Parameter.empty
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and not has_default:
            params.append(click.Argument([spec.name], type=kind))
            continue
        default = param.default if has_default else None
        params.append(
            click.Option(
                [spec.option, spec.name],
                type=kind,
                required=not has_default,
                default=default,
                show_default=default is not None,
                help=spec.help,
            )
        )
    return params


def reader_command(reader_cls) -> click.Command:
    """``histokg read NAME``: the reader's inputs (arguments and options, --library-id, --mpp) and -o."""

    @holding_lock("out", f"histokg read {reader_cls.name}", folder=False, label="output .h5ad")
    def run(out: Path, overwrite: bool, **kwargs) -> None:
        from histokg.io import check_output_file
        from histokg.st.contract import write_h5ad

        paths = [kwargs.get(i.name) for i in reader_cls.cli_inputs() if i.kind in ("file", "dir")]
        check_output_file(out, "output .h5ad", overwrite=overwrite, inputs=paths)
        adata = reader_cls(**kwargs).read()
        click.echo(f"{adata.n_obs} spots x {adata.n_vars} genes -> {write_h5ad(adata, out)}")

    params = reader_params(reader_cls)
    inputs = zip(params, reader_cls.cli_inputs(), strict=True)
    arguments = [f"{p.human_readable_name}: {i.help}" for p, i in inputs if isinstance(p, click.Argument)]
    doc = (reader_cls.__doc__ or reader_cls.name).strip().splitlines()[0]
    if arguments:
        doc += "\n\n\b\n" + "\n".join(arguments)  # \b: click keeps these lines as they are
    out = click.Option(
        ["-o", "--out"],
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="The .h5ad to write.",
    )
    overwrite = click.Option(["--overwrite"], is_flag=True, help="Replace OUT if it exists.")
    return click.Command(reader_cls.name, params=[*params, out, overwrite], callback=run, help=doc)


@cli.group(cls=_ReaderGroup)
def read() -> None:
    """Read spatial transcriptomics into an .h5ad following the AnnData contract.

    One command per registered reader (histokg.st.readers); an .h5ad records the slide, its MPP and
    where it came from, and the spot size. TECH may be spelled in any case, with - or _ (Visium_HD).
    """


@cli.command()
@click.argument("h5ad", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Paired .h5ad."
)
@click.option(
    "--overlay-dir", type=click.Path(file_okay=False, path_type=Path), help="Write spot overlays here."
)
@click.option(
    "--slide-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding the slides, when they moved since H5AD was read (found by file name).",
)
@CONFIG_OPTION
@SET_OPTION
@click.option("--overwrite", is_flag=True, help="Replace OUT and overlays that exist.")
@holding_lock("out", "histokg pair", folder=False, label="paired .h5ad")
def pair(
    h5ad: Path,
    out: Path,
    overlay_dir: Path | None,
    slide_dir: Path | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Pair each spot of H5AD with its patch: flags edge and off-tissue spots, records the geometry."""
    from histokg.config import load_config
    from histokg.io import check_output_file
    from histokg.st.contract import check_spots, read_h5ad, write_h5ad
    from histokg.st.pairing import PairingConfig, pair_spots, spots_overlay
    from histokg.wsi import save_png

    inputs = [h5ad, config_path]
    check_output_file(out, "paired .h5ad", overwrite=overwrite, inputs=inputs)
    cfg = load_config(PairingConfig, config_path, overrides)
    adata = read_h5ad(h5ad)
    check_spots(adata, f"h5ad file {h5ad}")
    libs = adata.obs[Key.obs.library_id].astype(str).unique() if overlay_dir is not None else []
    for lib in libs:
        check_output_file(overlay_dir / f"{lib}_spots.png", "overlay", overwrite=overwrite, inputs=inputs)
    adata = pair_spots(adata, cfg, slide_dir=slide_dir)
    write_h5ad(adata, out)
    for lib in libs:
        save_png(spots_overlay(adata, lib), overlay_dir / f"{lib}_spots.png")
    click.echo(f"paired {adata.n_obs} spots -> {out}")


# --------------------------------------------------------------------------- training


@cli.command("train")
@CONFIG_OPTION
@SET_OPTION
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Continue the run in this folder from its checkpoints/last.pt, with its own config.yaml "
    "(only optim.epochs may change).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace the run already in out_dir (its files are removed first)."
)
def train_cmd(
    config_path: Path | None, overrides: tuple[str, ...], resume_dir: Path | None, overwrite: bool
) -> None:
    """Train the dual encoder (single process, or under torchrun for several GPUs/nodes).

    A folder that already holds a run is never mixed with a new one: pass --resume RUN_DIR to continue
    it or --overwrite to replace it.
    """
    from histokg.config import load_config
    from histokg.io import check_not_input
    from histokg.train import TrainConfig, train
    from histokg.train.rundir import resume_config, run_outputs

    if resume_dir is not None:
        cfg = resume_config(resume_dir, config_path, overrides)
    else:
        cfg = load_config(TrainConfig, config_path, overrides)
    if overwrite and config_path is not None:  # the run's files go first: never the config just read
        check_not_input(run_outputs(cfg.out_dir), [config_path], f"out_dir {cfg.out_dir}: output")
    result = train(cfg, resume=resume_dir is not None, overwrite=overwrite)
    last = result.history[-1] if result.history else {}
    click.echo(
        f"trained {result.steps} steps in {result.seconds:.0f} s; best {cfg.early_stopping.metric} = {result.best_metric:.4f}; "
        f"last epoch: " + ", ".join(f"{k}={v:.3f}" for k, v in last.items() if k not in ("epoch", "step"))
    )
    click.echo(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")


@cli.command("embed")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output .h5ad."
)
@click.option("--mpp", type=float, help="MPP for slides that lack it (whole-slide inputs).")
@click.option(
    "--slide-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding the slides of .h5ad inputs, when they moved since reading (found by file name).",
)
@click.option(
    "--images-only",
    is_flag=True,
    help="Embed the patches only (no expression tower), e.g. another species' data.",
)
@embedding_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@holding_lock("out", "histokg embed", folder=False, label="embedded .h5ad")
def embed_cmd(
    checkpoint: Path,
    inputs: tuple[Path, ...],
    out: Path,
    mpp: float | None,
    slide_dir: Path | None,
    images_only: bool,
    batch_size: int,
    num_workers: int,
    device: str | None,
    overwrite: bool,
) -> None:
    """Embed INPUTS with a trained model: .h5ad files (spots), study folders, or slides (whole-slide tiles)."""
    from histokg.checkpoint import load_model
    from histokg.io import check_output_file
    from histokg.st.contract import check_spots, read_h5ad, write_h5ad
    from histokg.st.study import load_study
    from histokg.tl.embed import concat_embedded, embed, embed_slide

    check_output_file(out, "embedded .h5ad", overwrite=overwrite, inputs=[checkpoint, *inputs])

    # spot inputs are read (and refused with a clear error) before the model is loaded
    spots = {
        p: load_study(p) if p.is_dir() else read_h5ad(p) for p in inputs if p.is_dir() or p.suffix == ".h5ad"
    }
    for path, adata in spots.items():
        if not path.is_dir():  # a study folder is checked as it is read
            check_spots(adata, f"h5ad file {path}")
    model = load_model(checkpoint, "cpu")  # tl.embed moves it to --device
    parts = []
    for path in inputs:
        if path in spots:
            adata = spots[path]
            embed(
                adata,
                model,
                expression=not images_only,
                slide_dir=slide_dir,
                batch_size=batch_size,
                num_workers=num_workers,
                device=device,
            )
        else:
            adata = embed_slide(
                path, model, mpp=mpp, batch_size=batch_size, num_workers=num_workers, device=device
            )
        parts.append(adata)
    adata = concat_embedded(parts)
    adata.uns.setdefault(Key.uns.histokg, {})[Key.histokg.params] = model.params
    write_h5ad(adata, out)
    embedded = ", ".join(k for k in adata.obsm if k.startswith(Key.obsm.image))
    click.echo(f"{adata.n_obs} observations embedded ({embedded}) -> {out}")


@cli.command("embed-spatialdata")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--table", help="Table whose observations to embed (default: the store's only table).")
@click.option("--image", help="Image element the patches come from (default: the finest over the shapes).")
@click.option(
    "--slide",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The file the image element was made from (default: the element, written to a temporary TIFF).",
)
@click.option("--mpp", type=float, help="Microns per pixel of the image, when the store does not record it.")
@click.option("--name", default=SData.embeddings, show_default=True, help="The table of embeddings to write.")
@click.option("--images-only", is_flag=True, help="Embed the patches only (no expression tower).")
@embedding_options
@click.option("--overwrite", is_flag=True, help="Replace a table NAME written before.")
@holding_lock("store", "histokg embed-spatialdata", folder=False, label="SpatialData store")
def embed_spatialdata_cmd(
    store: Path,
    checkpoint: Path,
    table: str | None,
    image: str | None,
    slide: Path | None,
    mpp: float | None,
    name: str,
    images_only: bool,
    batch_size: int,
    num_workers: int,
    device: str | None,
    overwrite: bool,
) -> None:
    """Embed the observations of a table of a SpatialData STORE (e.g. Visium HD bins) and write the
    embeddings into STORE as a new table annotating the same shapes (obsm X_histokg, X_histokg_expr)."""
    from histokg.export.spatialdata import embed_into_spatialdata

    written, adata = embed_into_spatialdata(
        store,
        checkpoint,
        table=table,
        image=image,
        slide=slide,
        mpp=mpp,
        name=name,
        expression=not images_only,
        overwrite=overwrite,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
    )
    click.echo(f"{adata.n_obs} observations embedded -> {written}")


@cli.command("evaluate")
@click.argument(
    "embedded", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The checkpoint that embedded EMBEDDED; its training slides are the reference.",
)
@click.option(
    "--reference", "reference_libs", multiple=True, help="Reference (training) library ids, if no checkpoint."
)
@click.option(
    "--heldout", "heldout_libs", multiple=True, help="Held-out library ids (default: all non-reference)."
)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=None,
    help="kNN neighbours for the prediction (default: chosen on the reference, each of its slides "
    "predicted from the others).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=None,
    help="Ridge penalty (default: chosen on the reference as -k is).",
)
@click.option(
    "--key",
    default=Key.obsm.image,
    show_default=True,
    help="obsm key of the image embeddings (embed's key_added); the expression ones are KEY_expr.",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(["knn", "ridge", "blend"]),
    help="How expression is predicted from the image embeddings (repeatable; default: knn and ridge): "
    "knn over the reference's expression embeddings, ridge on the reference's image embeddings, blend "
    "= their mean.",
)
@click.option(
    "--smooth",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Smooth predictions over each slide's spot graph: (1 - s) * own + s * neighbours' mean.",
)
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier evaluation in --out.")
@holding_lock("out_dir", "histokg evaluate", label="evaluation folder")
def evaluate_cmd(
    embedded: tuple[Path, ...],
    checkpoint: Path | None,
    reference_libs: tuple[str, ...],
    heldout_libs: tuple[str, ...],
    out_dir: Path,
    k: int | None,
    alpha: float | None,
    key: str,
    methods: tuple[str, ...],
    smooth: float,
    overwrite: bool,
) -> None:
    """Evaluate embeddings of EMBEDDED (from `histokg embed`; several files of one checkpoint are
    combined, e.g. the reference's and a held-out slide's) on held-out slides.

    Prints the summary table; results.json (every number), predicted.h5ad and report.html/.md go to --out.
    """
    from histokg.heldout import EVALUATION_FILES, evaluate_embedded
    from histokg.io import check_not_input, check_output_dir, check_output_file
    from histokg.report import format_summary_table
    from histokg.tl.embed import read_embedded

    check_output_dir(out_dir, "evaluation folder")
    check_not_input(
        [out_dir / name for name in EVALUATION_FILES], [*embedded, checkpoint], "evaluation output"
    )
    check_output_file(out_dir / "results.json", "evaluation results", overwrite=overwrite)
    adata = read_embedded(embedded)
    results = evaluate_embedded(
        adata,
        out_dir,
        checkpoint=checkpoint,
        reference_libs=reference_libs,
        heldout_libs=heldout_libs,
        k=k,
        alpha=alpha,
        key=key,
        methods=methods or ("knn", "ridge"),
        smooth=smooth,
    )
    click.echo(format_summary_table(results))
    click.echo(f"\nresults.json, predicted.h5ad and report.html in {out_dir}")


# --------------------------------------------------------------------------- pipeline


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an earlier demo in --out (its outputs are removed first)."
)
@CONFIG_OPTION
@SET_OPTION
def demo(out_dir: Path, overwrite: bool, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Run the whole pipeline on the embedded synthetic study."""
    from histokg.config import load_config
    from histokg.pipeline import DemoConfig, run_demo

    cfg = load_config(DemoConfig, config_path, overrides)
    click.echo(run_demo(out_dir, cfg, overwrite=overwrite, inputs=[config_path]))


@cli.command("versions")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The checkpoint the step used: its path and SHA-256 are recorded.",
)
@click.option("--step", default="histokg", show_default=True, help="The step's name (the YAML's top key).")
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: print)."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@holding_lock("out", "histokg versions", folder=False, label="versions file")
def versions_cmd(checkpoint: Path | None, step: str, out: Path | None, overwrite: bool) -> None:
    """The versions of histokg, Python, torch and timm (and the checkpoint's hash) as versions.yml."""
    from histokg.io import check_output_file
    from histokg.versions import versions_yaml, write_versions

    if out is None:
        click.echo(versions_yaml(step, checkpoint=checkpoint), nl=False)
        return
    check_output_file(out, "versions file", overwrite=overwrite, inputs=[checkpoint])
    click.echo(f"-> {write_versions(out, step, checkpoint=checkpoint)}")


@cli.group("samples")
def samples_group() -> None:
    """A study's sample sheet (sample,slide,st_dir,patient), as the Snakemake workflow reads it."""


@samples_group.command("check")
@click.argument("sheet", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--train-patients",
    "train_patients",
    multiple=True,
    help="Patients whose sections train (repeatable): checked against the sheet, and the plan printed.",
)
def samples_check(sheet: Path, train_patients: tuple[str, ...]) -> None:
    """Check SHEET (columns, sample ids, files, duplicates): one line naming row and field if it is bad."""
    from histokg.workflow import plan_study, read_samples

    samples = read_samples(sheet)
    with_st = sum(s.has_st for s in samples)
    click.echo(
        f"{sheet}: {len(samples)} samples ({with_st} with transcriptomics, {len(samples) - with_st} H&E only), "
        f"{len({s.patient for s in samples})} patients"
    )
    if train_patients:
        plan = plan_study(samples, train_patients, sheet=sheet, field="--train-patients")
        for what, names in (("train", plan.train), ("evaluate", plan.evaluate), ("predict", plan.predict)):
            click.echo(f"  {what}: {', '.join(names) or '-'}")


# --------------------------------------------------------------------------- retrieval and the web app


@cli.command("serve")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Bind address (localhost unless told otherwise)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="A host name (any port) or name:port browsers may reach the app by, besides 127.0.0.1, "
    "localhost and [::1] on --port (and --host itself); requests naming any other Host are refused "
    "(DNS rebinding). Repeat for several.",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model for uploads (default: the index's, if it is still there).",
)
@click.option("--max-upload-mb", type=click.FloatRange(0.1, 10_000), default=200.0, show_default=True)
@click.option(
    "--max-upload-tiles",
    type=click.IntRange(1, 10_000_000),
    default=5_000,
    show_default=True,
    help="Most grid tiles (at the model's patch geometry) one upload may be cut into; counted from the "
    "image header and its MPP before anything is decoded.",
)
@click.option(
    "--max-job-seconds",
    type=click.FloatRange(1, 86_400),
    default=300.0,
    show_default=True,
    help="Most seconds one upload's embedding may run; a job over it is stopped.",
)
@click.option(
    "--max-pending-uploads",
    type=click.IntRange(1, 100),
    default=4,
    show_default=True,
    help="Most uploads being checked, waiting or embedding at once; one more is refused (429).",
)
@click.option(
    "--predictions",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Outputs of `histokg predict` to show as slides predicted from H&E: its -o folder, one slide's "
    "folder or a predicted.h5ad. Repeat for several.",
)
def serve(
    index_dir: Path,
    host: str,
    port: int,
    allowed_hosts: tuple[str, ...],
    checkpoint: Path | None,
    max_upload_mb: float,
    max_upload_tiles: int,
    max_job_seconds: float,
    max_pending_uploads: int,
    predictions: tuple[Path, ...],
) -> None:
    """Serve the web app over the index in INDEX_DIR, and slides predicted from H&E (--predictions)
    (FastAPI; OpenAPI schema at /docs)."""
    import uvicorn

    from app.main import create_app  # the one place histokg reaches the app: this command starts it
    from app.security import LOOPBACK, parse_host

    served = [f"{name}:{port}" for name in LOOPBACK]
    bound = f"[{host}]" if ":" in host else host
    if host not in ("0.0.0.0", "::") and parse_host(bound) and f"{bound}:{port}" not in served:
        served.append(f"{bound}:{port}")
    for extra in allowed_hosts:
        parsed = parse_host(extra)
        if parsed is None:
            raise click.BadParameter(
                f"{extra!r} is not a host name, an IP address or name:port", param_hint="--allowed-host"
            )
        served.append(extra)  # a name without a port: any port (behind a proxy, the public one)
    application = create_app(
        index_dir,
        checkpoint=checkpoint,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_upload_tiles=max_upload_tiles,
        max_job_seconds=max_job_seconds,
        max_pending_uploads=max_pending_uploads,
        allowed_hosts=served,
        predictions=predictions,
    )
    n_predicted = len(application.state.histokg.predicted)
    click.echo(
        f"histokg app on http://{bound}:{port}/ (index {index_dir}"
        f"{f', {n_predicted} predicted slides' if predictions else ''}); serving Host "
        f"{', '.join(served)}; Ctrl-C stops it"
    )
    uvicorn.run(application, host=host, port=port, log_level="info")


from histokg.retrieval import cli as _retrieval_cli  # noqa: E402  (index build|add|query|evaluate|info)

cli.add_command(_retrieval_cli.index)
from histokg.bench import cli as _bench_cli  # noqa: E402  (histokg bench)

cli.add_command(_bench_cli.bench)
from histokg.predict import cli as _predict_cli  # noqa: E402  (histokg predict, histokg export)

cli.add_command(_predict_cli.predict_cmd)
cli.add_command(_predict_cli.export)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line and exit with status 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _is_user_error(exc):
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a path the user named, or made
            from histokg.io import short_path

            name = short_path(exc.filename) if exc.filename else "a path"
            click.echo(f"error: {name}: the name is too long for the file system ({exc.strerror})", err=True)
            sys.exit(2)
        raise


def _is_user_error(exc: Exception) -> bool:
    from pathways_kg.dataconf import DataConfError
    from pathways_kg.errors import KGError

    return isinstance(exc, HistokgError | KGError | DataConfError)


if __name__ == "__main__":
    main()
