"""Evaluation report: ``results.json``, ``report.md``, a self-contained ``report.html`` and PNG figures.

:func:`write_report` takes the dict :func:`histokg.evaluate.evaluate` returns (plus, optionally, the
held-out panel AnnData and the reference for figures); :func:`format_summary_table` renders the
headline numbers as plain text for the console.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from histokg import keys
from histokg.io import atomic_open, write_json
from histokg.keys import Key

log = logging.getLogger(__name__)

_LABELS = {
    "pearson_heg": "Pearson r, top-{n} HEG",
    "pearson_hvg": "Pearson r, top-{n} HVG",
    "pearson_all": "Pearson r, all {n} panel genes",
    "mse": "MSE (log1p)",
    "mae": "MAE (log1p)",
}


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def write_report(
    results: Mapping[str, Any],
    out_dir: str | Path,
    *,
    heldout_panel_adata: ad.AnnData | None = None,
    reference: ad.AnnData | None = None,
    n_genes: int = 4,
    max_slides: int = 3,
    label_key: str | None = Key.obs.region,
    library_key: str = Key.obs.library_id,
    use_rep: str = keys.IMAGE,
    title: str = "histokg evaluation",
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md``, ``report.html`` and figures to ``out_dir``.

    Figures (PNG beside the report): per-gene Pearson histogram; for up to ``max_slides`` held-out
    slides, spatial maps of measured vs predicted expression of the first ``n_genes`` HVGs (chosen on
    the reference slides, so not picked for looking good), when ``heldout_panel_adata`` is given; a
    UMAP of the image embeddings of reference and held-out spots coloured by slide, split, label and
    Leiden cluster, when ``reference`` and ``heldout_panel_adata`` carry ``obsm[use_rep]``.
    Returns ``{name: path}`` of everything written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["results"] = out_dir / "results.json"
    write_json(paths["results"], to_jsonable(results))
    figures: list[tuple[str, Path]] = []
    figures += _pearson_figure(results, out_dir)
    if heldout_panel_adata is not None:
        figures += _spatial_figures(results, heldout_panel_adata, out_dir, n_genes, max_slides, library_key)
        if reference is not None:
            figures += _umap_figure(reference, heldout_panel_adata, out_dir, label_key, library_key, use_rep)
    for _, path in figures:
        paths[path.stem] = path
    tables = summary_tables(results)
    paths["markdown"] = out_dir / "report.md"
    with atomic_open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(_markdown(results, tables, figures, title))
    paths["html"] = out_dir / "report.html"
    with atomic_open(paths["html"], "w", encoding="utf-8") as fh:
        fh.write(_html(results, tables, figures, title))
    log.info("report written to %s (%d figures)", out_dir, len(figures))
    return paths


def format_summary_table(results: Mapping[str, Any]) -> str:
    """The headline numbers as aligned plain text (for the console)."""
    lines = [_model_line(results), _split_line(results)]
    lines += [f"warning: {w}" for w in results.get("warnings", [])]
    for table in summary_tables(results):
        if table.title.startswith("Per held-out slide"):
            continue
        lines += ["", table.title]
        widths = [max(len(str(r[i])) for r in [table.header, *table.rows]) for i in range(len(table.header))]
        for j, row in enumerate([table.header, *table.rows]):
            cells = [
                str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row)
            ]
            lines.append("  ".join(cells).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_tables(results: Mapping[str, Any]) -> list[Table]:
    """The report's tables: prediction, retrieval, clustering (means over slides) and per slide."""
    summary = results.get("summary", {})
    genes = results.get("genes", {})
    sizes = {"pearson_heg": len(genes.get("heg", [])), "pearson_hvg": len(genes.get("hvg", []))}
    sizes["pearson_all"] = len(genes.get("panel", []))
    tables: list[Table] = []
    pred = summary.get("prediction") or {}
    methods = list(pred)
    if methods:
        rows = [
            [_LABELS[key].format(n=sizes.get(key, "")), *[_fmt(pred[m].get(key)) for m in methods]]
            for key in ("pearson_heg", "pearson_hvg", "pearson_all", "mse", "mae")
        ]
        tables.append(Table("Expression prediction (mean over held-out slides)", ["metric", *methods], rows))
    retrieval = summary.get("retrieval")
    if retrieval:
        ks = [key for key in retrieval.get("chance", {})]
        rows = [
            ["image -> expression", *[_fmt(retrieval["image_to_expression"].get(q)) for q in ks]],
            ["expression -> image", *[_fmt(retrieval["expression_to_image"].get(q)) for q in ks]],
            ["chance", *[_fmt(retrieval["chance"].get(q)) for q in ks]],
        ]
        note = f"candidate pool = whole held-out slide (mean {_fmt(retrieval.get('pool_size'), 0)} spots)"
        tables.append(Table("Cross-modal retrieval", ["direction", *ks], rows, note))
    clustering = summary.get("clustering")
    if clustering:
        rows = [
            [
                name,
                _fmt(clustering[name].get("ari")),
                _fmt(clustering[name].get("nmi")),
                _fmt(clustering[name].get("n_clusters"), 1),
            ]
            for name in ("image", "expression")
            if isinstance(clustering.get(name), Mapping)
        ]
        if rows:
            tables.append(Table("Leiden clusters vs labels", ["embedding", "ARI", "NMI", "clusters"], rows))
    slides = results.get("slides", {})
    if slides:
        header = ["slide", "spots", *[f"r HEG {m}" for m in methods], *[f"r all {m}" for m in methods]]
        header += ["R@10 img->expr", "R@10 chance", "ARI image"]
        rows = []
        for lib, entry in slides.items():
            p = entry.get("prediction", {})
            r = entry.get("retrieval", {})
            c = entry.get("clustering", {})
            rows.append(
                [
                    str(lib),
                    str(entry.get("n_spots", "")),
                    *[_fmt(p.get(m, {}).get("pearson_heg")) for m in methods],
                    *[_fmt(p.get(m, {}).get("pearson_all")) for m in methods],
                    _fmt(r.get("image_to_expression", {}).get("R@10")),
                    _fmt(r.get("chance", {}).get("R@10")),
                    _fmt(c.get("image", {}).get("ari")),
                ]
            )
        tables.append(Table("Per held-out slide", header, rows))
    return tables


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: arrays -> lists, NaN/inf -> None, numpy scalars -> Python, keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return to_jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- figures


def _pearson_figure(results: Mapping[str, Any], out_dir: Path) -> list[tuple[str, Path]]:
    from histokg import pl

    per_gene = results.get("per_gene_pearson") or {}
    series = {
        m: np.concatenate([np.asarray(v, dtype=np.float64) for v in by_slide.values()])
        for m, by_slide in per_gene.items()
        if by_slide
    }
    if not series:
        return []
    path = out_dir / "pearson_hist.png"
    pl.pearson_hist(series, path, show=False)
    n = len(results.get("genes", {}).get("panel", []))
    return [
        (
            f"Per-gene Pearson r between measured and predicted expression, {n} panel genes x held-out slides",
            path,
        )
    ]


def _spatial_figures(
    results: Mapping[str, Any],
    panel: ad.AnnData,
    out_dir: Path,
    n_genes: int,
    max_slides: int,
    library_key: str,
) -> list[tuple[str, Path]]:
    from histokg import pl

    layers = [k for k in panel.layers if str(k).startswith(keys.PRED_PREFIX)]
    if not layers or panel.n_vars == 0 or library_key not in panel.obs:
        return []
    measured = bool(panel.uns.get(Key.uns.histokg, {}).get(Key.histokg.measured, True))
    order = list(results.get("genes", {}).get("hvg", [])) + list(results.get("genes", {}).get("heg", []))
    order += list(map(str, panel.var_names))
    present = set(map(str, panel.var_names))
    genes = [g for g in dict.fromkeys(order) if g in present][:n_genes]
    out = []
    libs = sorted(map(str, pd.unique(panel.obs[library_key].astype(str))))[:max_slides]
    for lib in libs:
        path = out_dir / f"spatial_{_safe(lib)}.png"
        pl.spatial_genes(
            panel,
            genes,
            lib,
            layers=(["X"] if measured else []) + layers,
            path=path,
            library_key=library_key,
            show=False,
        )
        out.append(
            (f"{lib}: measured vs predicted log1p CP10k of the top reference HVGs {', '.join(genes)}", path)
        )
    return out


def _umap_figure(
    reference: ad.AnnData,
    heldout: ad.AnnData,
    out_dir: Path,
    label_key: str | None,
    library_key: str,
    use_rep: str,
) -> list[tuple[str, Path]]:
    from histokg import pl
    from histokg.tl.analysis import cluster

    if use_rep not in reference.obsm or use_rep not in heldout.obsm:
        return []
    parts = []
    for split, a in (("reference", reference), ("held-out", heldout)):
        obs = pd.DataFrame(index=a.obs_names.astype(str))
        obs["slide"] = a.obs[library_key].astype(str).to_numpy() if library_key in a.obs else split
        obs["split"] = split
        if label_key and label_key in a.obs:
            obs[label_key] = a.obs[label_key].astype(str).to_numpy()
        parts.append((obs, np.asarray(a.obsm[use_rep], dtype=np.float32)))
    obs = pd.concat([p[0] for p in parts])
    obs.index = pd.Index([f"{s}:{i}" for s, i in zip(obs["split"], obs.index, strict=True)])
    for col in obs.columns:
        obs[col] = obs[col].astype("category")
    emb = np.concatenate([p[1] for p in parts])
    if len(obs) < 5:
        return []
    tmp = ad.AnnData(obs=obs)
    tmp.obsm[use_rep] = emb
    cluster(tmp, use_rep=use_rep, key_added="leiden")
    colors = ["slide", "split", *([label_key] if label_key and label_key in tmp.obs else []), "leiden"]
    path = out_dir / "umap.png"
    pl.umap(tmp, colors, path=path, show=False)
    return [(f"UMAP of the image embeddings obsm[{use_rep!r}] of reference and held-out spots", path)]


# --------------------------------------------------------------------------- rendering


def _split_line(results: Mapping[str, Any]) -> str:
    split = results.get("protocol", {}).get("split", {})
    ref = ", ".join(split.get("reference", [])) or "?"
    held = ", ".join(split.get("heldout", [])) or "?"
    return f"held-out slides: {held}  (reference/training slides: {ref})"


def _model_line(results: Mapping[str, Any]) -> str:
    """Which model was evaluated: architecture, loss, checkpoint, and the slides it trained and validated on."""
    m = results.get("model") or {}
    if not m:
        return "model: not recorded (embeddings without uns['histokg']['params'])"
    sha = str(m.get("checkpoint_sha256") or "")[:12] or "?"
    val = ", ".join(m.get("val_slides") or []) or "?"
    train = ", ".join(m.get("train_slides") or []) or "?"
    return (
        f"model: {m.get('model', '?')} trained with loss {m.get('loss', '?')} (checkpoint {sha}); "
        f"training slides: {train}; validation (early stopping) slides: {val}"
    )


def _protocol_items(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    items = []
    for key, value in results.get("protocol", {}).items():
        if isinstance(value, Mapping):
            text = "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
        else:
            text = _plain(value)
        items.append((str(key), text))
    return items


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _markdown(results, tables: list[Table], figures, title: str) -> str:
    out = [f"# {title}", "", _model_line(results), "", _split_line(results), ""]
    out += [f"> **Warning:** {w}\n" for w in results.get("warnings", [])]
    for table in tables:
        out += [f"## {table.title}", ""]
        out.append("| " + " | ".join(table.header) + " |")
        out.append("| " + " | ".join("---" for _ in table.header) + " |")
        out += ["| " + " | ".join(row) + " |" for row in table.rows]
        if table.note:
            out += ["", f"_{table.note}_"]
        out.append("")
    out += ["## Protocol", ""]
    out += [f"- **{key}**: {text}" for key, text in _protocol_items(results)]
    out.append("")
    if figures:
        out += ["## Figures", ""]
        for caption, path in figures:
            out += [f"![{caption}]({path.name})", "", f"_{caption}_", ""]
    return "\n".join(out)


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
dt { font-weight: 600; margin-top: 0.4em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note { color: #555; font-size: 0.9em; }
.warning { background: #fff3cd; border: 1px solid #e0c36b; padding: 0.4em 0.7em; }
"""


def _html(results, tables: list[Table], figures, title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{e(_model_line(results))}</p>",
        f"<p>{e(_split_line(results))}</p>",
    ]
    out += [f'<p class="warning"><b>Warning:</b> {e(w)}</p>' for w in results.get("warnings", [])]
    for table in tables:
        out.append(f"<h2>{e(table.title)}</h2>")
        out.append(
            "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr></thead><tbody>"
        )
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows]
        out.append("</tbody></table>")
        if table.note:
            out.append(f'<p class="note">{e(table.note)}</p>')
    out.append("<h2>Protocol</h2><dl>")
    out += [f"<dt>{e(key)}</dt><dd>{e(text)}</dd>" for key, text in _protocol_items(results)]
    out.append("</dl>")
    if figures:
        out.append("<h2>Figures</h2>")
        for caption, path in figures:
            out.append(
                f'<figure><img src="{_data_uri(path)}" alt="{e(caption, quote=True)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    out.append(
        '<p class="note">Figures are embedded in this file; every number, per slide and per gene, is in '
        "results.json beside it.</p>"
    )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _data_uri(path: Path) -> str:
    """A PNG as a data: URI, so that report.html is one self-contained file."""
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "slide"
