"""``pathways-kg``: build the graph, embed it, inspect a bundle.

    pathways-kg build --out runs/kg/graph [--panglao PATH] [--genes FILE | --genes-from-h5ad FILE]
    pathways-kg embed runs/kg/graph --out runs/kg/bundle [--model rotate] [--set embed.training.epochs=50]
    pathways-kg inspect runs/kg/bundle --entity "phenotype:invasive carcinoma" --plot map.png

Every command takes ``--config FILE`` (YAML filling :class:`pathways_kg.config.KGConfig`) and
repeatable ``--set a.b=value`` overrides; the resolved config is written next to the output.
Input errors (a :class:`~pathways_kg.errors.KGError`: bad files, config keys or values; files that
cannot be read or written) are printed as one line ``Error: ...`` without a traceback, and the
command exits with status 2, as click's own usage errors do.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from pathways_kg.config import Component, KGConfig, load_config, to_dict
from pathways_kg.errors import KGError
from pathways_kg.io import atomic_open, input_overlap
from pathways_kg.models import MODELS, get_model


class InputError(click.ClickException):
    """Bad input: printed as one line ``Error: ...``; exit status 2 (as for click's usage errors)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KGError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            raise InputError(_os_error_message(exc)) from None

    return wrapper


def _os_error_message(exc: OSError) -> str:
    """``path: reason``; a folder that cannot be made because a file is in the way names that file."""
    path = Path(exc.filename)
    if isinstance(exc, FileExistsError | NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocker == path:
            return f"{path}: is a file, not a folder"
        if blocker is not None:
            return f"{path}: cannot create it, {blocker} is a file, not a folder"
    return f"{path}: {exc.strerror or exc}"


def _not_inputs(out: str, names: tuple[str, ...], inputs: list[str | None]) -> None:
    """Refuse an output (file ``names`` in folder ``out``) that is one of the command's inputs."""
    overlap = input_overlap([Path(out) / name for name in names], inputs)
    if overlap:
        raise KGError(f"{overlap}; writing it would destroy that input: choose another --out")


def _config(config: str | None, overrides: tuple[str, ...], extra: list[str]) -> KGConfig:
    return load_config(config, [*overrides, *extra])


def _save_config(cfg: KGConfig, path: Path) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


config_option = click.option(
    "--config", "config", type=click.Path(dir_okay=False), help="YAML config (configs/kg/*.yaml)."
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. embed.seed=1.",
)


@click.group()
@click.option("-v", "--verbose", count=True, help="-v: progress logs; -vv: also pykeen's.")
def main(verbose: int) -> None:
    """Phenotype-pathway-tissue knowledge graph: build, embed, inspect."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    quiet_pykeen(verbose)
    if verbose < 2:
        warnings.filterwarnings("ignore", message=".*pin_memory.*")


def quiet_pykeen(verbose: int) -> None:
    """Filter the root handlers so that pykeen's chatter shows only at ``-vv`` (errors always show)."""
    quiet = logging.INFO if verbose > 1 else logging.ERROR
    for handler in logging.getLogger().handlers:
        handler.addFilter(functools.partial(_keep_record, quiet=quiet))


def _keep_record(record: logging.LogRecord, quiet: int) -> bool:
    """pykeen sets INFO on its own loggers; show its records only at -vv (or when they are errors)."""
    noisy = record.name.split(".")[0] in ("pykeen", "torch_max_mem", "class_resolver") or (
        record.name == "root" and f"{os.sep}pykeen{os.sep}" in record.pathname  # pykeen also logs to root
    )
    return not noisy or record.levelno >= quiet


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder for entities.tsv, triples.tsv, summary.json.",
)
@config_option
@set_option
@click.option(
    "--panglao", type=click.Path(dir_okay=False), help="PanglaoDB markers TSV (read from here, never copied)."
)
@click.option("--organ", "organs", multiple=True, help="Keep only these PanglaoDB organs (repeatable).")
@click.option(
    "--genes", type=click.Path(dir_okay=False), help="Gene universe: a file with one symbol per line."
)
@click.option(
    "--genes-from-h5ad",
    type=click.Path(dir_okay=False),
    help="Gene universe: the var_names of an .h5ad file.",
)
@click.option(
    "--min-genes",
    type=click.IntRange(min=0),
    help="With a gene universe: drop pathways with fewer genes in it.",
)
@_handle_errors
def build(
    out: str,
    config: str | None,
    overrides: tuple[str, ...],
    panglao: str | None,
    organs: tuple[str, ...],
    genes: str | None,
    genes_from_h5ad: str | None,
    min_genes: int | None,
) -> None:
    """Build and validate the graph; write triples (with source and licence) and a summary."""
    from pathways_kg.build import build_graph
    from pathways_kg.graph import write_graph

    extra = []
    if panglao:
        extra.append(f"build.sources.panglao={json.dumps(panglao)}")
    if organs:
        extra.append(f"build.sources.panglao_organs={json.dumps(list(organs))}")
    if min_genes is not None:
        extra.append(f"build.min_genes={min_genes}")
    _not_inputs(
        out,
        ("entities.tsv", "triples.tsv", "summary.json", "config.yaml"),
        [config, panglao, genes, genes_from_h5ad],
    )
    cfg = _config(config, overrides, extra)
    if genes and genes_from_h5ad:
        raise KGError("give either --genes or --genes-from-h5ad, not both")
    universe = _read_universe(genes) if genes else _h5ad_genes(genes_from_h5ad) if genes_from_h5ad else None
    graph = build_graph(cfg.build, universe)
    paths = write_graph(graph, out)
    _save_config(cfg, Path(out) / "config.yaml")
    summary = graph.summary()
    click.echo(f"graph: {summary['n_entities']} entities, {summary['n_edges']} edges -> {paths['triples']}")
    click.echo("entities: " + ", ".join(f"{k} {v}" for k, v in summary["entities_by_type"].items()))
    click.echo("families: " + ", ".join(f"{k} {v}" for k, v in summary["edges_by_family"].items()))
    click.echo("relations: " + ", ".join(f"{k} {v}" for k, v in summary["edges_by_relation"].items() if v))
    if graph.universe:
        click.echo(
            f"gene universe: {graph.universe['size']} symbols, {graph.universe['genes_kept']} in the graph"
        )


@main.command()
@click.argument("graph", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output bundle folder.")
@config_option
@set_option
@click.option("--model", help=f"KG model: {', '.join(MODELS)}.")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, help="Random seed (split, initialisation, sampling).")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars for training (epochs, loss) and evaluation; default: when stderr is a terminal.",
)
@_handle_errors
def embed(
    graph: str,
    out: str,
    config: str | None,
    overrides: tuple[str, ...],
    model: str | None,
    epochs: int | None,
    device: str | None,
    seed: int | None,
    threads: int | None,
    progress: bool | None,
) -> None:
    """Train a KG embedding on GRAPH (a `build` output folder) and write a bundle."""
    from pathways_kg.embed import embed_graph

    if Path(out).resolve() == Path(graph).resolve() or (Path(out).exists() and os.path.samefile(out, graph)):
        raise KGError(
            f"--out {out} is the graph folder {graph}: the bundle would replace its files; choose another --out"
        )
    _not_inputs(out, ("config.yaml", "bundle.json", "entities.tsv", "triples.tsv"), [config])

    extra = []
    if model:
        spec = get_model(model, "--model")
        extra.append(f"embed.model.name={spec.name}")
    if epochs is not None:
        extra.append(f"embed.training.epochs={epochs}")
    if device:
        extra.append(f"embed.device={device}")
    if seed is not None:
        extra.append(f"embed.seed={seed}")
    base = _config(config, (), [])
    cfg = _config(config, overrides, extra)
    if model and get_model(base.embed.model.name).name != cfg.embed.model.name:
        # another model than the config's: keep only the dimension of the config's model kwargs
        kwargs = {k: v for k, v in cfg.embed.model.kwargs.items() if k == "embedding_dim"}
        cfg = dataclasses.replace(
            cfg, embed=dataclasses.replace(cfg.embed, model=Component(cfg.embed.model.name, kwargs))
        )
    if threads:
        import torch

        torch.set_num_threads(threads)
    bundle = embed_graph(graph, cfg.embed, out, progress=progress)
    _save_config(cfg, Path(out) / "config.yaml")
    m = bundle.meta["metrics"]
    click.echo(
        f"{bundle.model}: {len(bundle.entity_ids)} entities, dim {bundle.meta['embedding_dim']}, "
        f"{bundle.meta['train_seconds']:.1f} s training -> {out}"
    )
    click.echo(f"{'':10s} {'MRR':>8s} {'Hits@1':>8s} {'Hits@3':>8s} {'Hits@10':>8s}")
    for name in ("trained", "random"):
        r = m[name]
        click.echo(
            f"{name:10s} {r['mrr']:8.4f} {r['hits_at_1']:8.4f} {r['hits_at_3']:8.4f} {r['hits_at_10']:8.4f}"
        )


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--entity", "entities", multiple=True, help="Entity id, e.g. 'celltype:T cell' (repeatable).")
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Neighbours to list."
)
@click.option(
    "--relation", "relations", multiple=True, help="Only these relations (default: all that fit the entity)."
)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a 2-D map of the embeddings (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the neighbours as JSON.")
@_handle_errors
def inspect(
    bundle: str,
    entities: tuple[str, ...],
    k: int,
    relations: tuple[str, ...],
    plot: str | None,
    as_json: bool,
) -> None:
    """Nearest entities of an entity, per relation; a 2-D plot of the embeddings."""
    from pathways_kg.bundle import load_bundle
    from pathways_kg.explore import nearest, plot_embeddings

    b = load_bundle(bundle)
    if not as_json:
        click.echo(
            f"{b.model} bundle: {len(b.entity_ids)} entities, {len(b.relation_ids)} relations, "
            f"MRR {_metric(b.meta, 'trained')} (random {_metric(b.meta, 'random')})"
        )
    results = {e: nearest(b, e, k, relations or None) for e in entities}
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for entity, per_relation in results.items():
            click.echo(f"\n{entity}")
            for rel, items in per_relation.items():
                click.echo(f"  {rel}: " + "; ".join(f"{i} ({s:.3f})" for i, s in items))
    if plot:
        plot_embeddings(b, plot)
        if not as_json:
            click.echo(f"plot -> {plot}")


def _metric(meta: dict[str, Any], which: str, name: str = "mrr") -> str:
    """A metric from bundle.json for display; ``n/a`` when absent or null (a non-finite value)."""
    value = (meta.get("metrics") or {}).get(which, {}).get(name)
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _read_universe(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise KGError(f"{p}: gene list does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KGError(f"{p}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise KGError(f"{p}: cannot read ({exc.strerror or exc})") from None
    genes = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not genes:
        raise KGError(f"{p}: no gene symbols (expected one per line)")
    return genes


def _h5ad_genes(path: str) -> list[str]:
    import anndata

    p = Path(path)
    if not p.is_file():
        raise KGError(f"{p}: file does not exist")
    try:
        adata = anndata.read_h5ad(p, backed="r")
    except Exception as exc:  # anndata/h5py raise many types for a non-h5ad file
        raise KGError(f"{p}: cannot read as .h5ad ({type(exc).__name__}: {exc})") from None
    genes = [str(g) for g in adata.var_names]
    adata.file.close()
    return genes


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
