"""Tables and figure of a benchmark: ``results.md`` (mean +- std over seeds) and ``results.png``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from histokg.io import atomic_open, atomic_path

log = logging.getLogger(__name__)


def _cell(entry: dict, key: str, digits: int = 3) -> str:
    value = entry.get(key)
    if not isinstance(value, dict) or value.get("mean") is None:
        return "-"
    if entry.get("n_seeds", 1) > 1:
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    return f"{value['mean']:.{digits}f}"


def columns(results: dict) -> list[tuple[str, str]]:
    n = results["config"]["panel"]["n_top"]
    mean_panel = f"mean{results['config']['panel']['n_mean']}"
    k = results["config"]["eval"]["recall_k"]
    return [
        (f"panel/pearson_heg{n}", f"HEG-{n} r"),
        (f"panel/pearson_hvg{n}", f"HVG-{n} r"),
        ("panel/pearson_all", "all panel r"),
        ("panel/mse", "MSE"),
        (f"{mean_panel}/pearson_heg{n}", f"top-{results['config']['panel']['n_mean']}: HEG-{n} r"),
        (f"{mean_panel}/pearson_all", f"top-{results['config']['panel']['n_mean']}: all r"),
        ("pathway/pearson_hallmark", "Hallmark r"),
        ("pathway/pearson_reactome", "Reactome r"),
        (f"recall@{k}_i2e", f"R@{k} img→expr"),
        (f"recall@{k}_e2i", f"R@{k} expr→img"),
        (f"ridge:panel/pearson_heg{n}", f"ridge HEG-{n} r"),
    ]


def prior_auroc(results: dict, method: str, slide: str) -> str:
    """AUROC of the run's prior W on its training slides / on the held-out slide(s) ("-" without a prior)."""
    rows = [r for r in results["runs"] if r["method"] == method and "prior_auroc" in r]
    rows = [r for r in rows if slide == "all" or r["slide"] == slide]
    train = [r["prior_auroc"]["train"] for r in rows if r["prior_auroc"].get("train") is not None]
    test = [r["prior_auroc"]["test"] for r in rows if r["prior_auroc"].get("test") is not None]
    if not train and not test:
        return "-"
    return f"{_mean(train)} / {_mean(test)}"


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "-"


def markdown(results: dict) -> str:
    cols = columns(results)
    chance = [s for s in results["summary"] if s["slide"] == "all" and s["kind"] == "loss"]
    k = results["config"]["eval"]["recall_k"]
    lines = [
        "# histokg bench",
        "",
        f"Sections {', '.join(f'{s} ({n} spots)' for s, n in results['sections'].items())}; "
        f"{len(results['folds'])} fold(s); {results['config']['seeds']} seed(s). "
        f"Machine: {results['machine']['cpu_count']} CPU cores, torch threads {results['machine']['torch_threads']}, "
        f"GPU {results['machine']['cuda'] or 'none'}, load average {results['machine']['load_average_start']} -> "
        f"{results['machine']['load_average_end']}; total {results['timings_s'].get('total', float('nan')):.0f} s.",
        "",
    ]
    if chance:
        ch = chance[0].get(f"chance@{k}", {}).get("mean")
        if ch is not None:
            lines.append(f"Chance Recall@{k} (mean over held-out slides): {ch:.3f}.")
            lines.append("")
    for title, slides in (("Mean over held-out sections", ["all"]), ("Per held-out section", None)):
        lines += [f"## {title}", ""]
        header = ["method", "kind", "test", *[c[1] for c in cols], "prior AUROC train / test"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * 3 + "---:|" * (len(cols) + 1))
        entries = [s for s in results["summary"] if (s["slide"] == "all") == (slides is not None)]
        for e in entries:
            cells = [e["method"], e["kind"], e["slide"], *[_cell(e, c[0]) for c in cols],
                     prior_auroc(results, e["method"], e["slide"])]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += prior_section(results)
    lines += ["## Wall time per stage (s)", "", "| stage | s |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["timings_s"].items()]
    lines.append("")
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    lines += ["## Protocol", "", *[f"- **{k}**: {v}" for k, v in results["protocol"].items()], ""]
    return "\n".join(lines)


def prior_section(results: dict) -> list[str]:
    lines = ["## Prior quality (AUROC of W for same-cluster pairs)", ""]
    any_rows = False
    for fold in results["folds"]:
        info = fold.get("prior") or {}
        auroc = info.get("auroc") or {}
        if not auroc:
            continue
        any_rows = True
        lines.append(f"Fold test={'+'.join(fold['test'])}: chosen prior {info.get('chosen')}")
        lines.append("")
        kernels = sorted(
            {k for v in auroc.values() for part in v.values() if isinstance(part, dict) for k in part}
        )
        lines.append("| prior | slides | " + " | ".join(kernels) + " |")
        lines.append("|---|---|" + "---:|" * len(kernels))
        for name, parts in auroc.items():
            for where, scores in parts.items():
                if isinstance(scores, dict):
                    cells = [
                        f"{scores[k]:.3f}" if scores.get(k) is not None and np.isfinite(scores[k]) else "-"
                        for k in kernels
                    ]
                else:
                    cells = [f"{scores:.3f}" if scores is not None else "-"] + ["" for _ in kernels[1:]]
                lines.append(f"| {name} | {where} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines if any_rows else []


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = results["config"]["panel"]["n_top"]
    panels = [
        (f"panel/pearson_heg{n}", f"HEG-{n} Pearson (model panel)"),
        ("pathway/pearson_hallmark", "Hallmark Pearson"),
    ]
    k = results["config"]["eval"]["recall_k"]
    panels.append((f"recall@{k}_i2e", f"Recall@{k} image→expression"))
    summary = results["summary"]
    methods = list(dict.fromkeys(s["method"] for s in summary))
    slides = list(dict.fromkeys(s["slide"] for s in summary if s["slide"] != "all")) + ["all"]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(8, 0.9 * len(methods) * len(slides) / 2), 3.2 * len(panels))
    )
    width = 0.8 / len(slides)
    for ax, (key, title) in zip(np.atleast_1d(axes), panels, strict=True):
        for j, slide in enumerate(slides):
            means, stds = [], []
            for m in methods:
                e = next((s for s in summary if s["method"] == m and s["slide"] == slide), None)
                v = e.get(key) if e else None
                means.append(v["mean"] if isinstance(v, dict) and v["mean"] is not None else np.nan)
                stds.append(v["std"] if isinstance(v, dict) and v["std"] is not None else 0.0)
            x = np.arange(len(methods)) + (j - (len(slides) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=2, label=slide, color="black" if slide == "all" else None,
                   alpha=0.85)  # fmt: skip
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(title + " (mean ± std over seeds)", fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=len(slides), title="held-out section")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``results.md`` and ``results.png`` (``results.json`` is written by the caller)."""
    with atomic_open(out / "results.md", "w", encoding="utf-8") as fh:
        fh.write(markdown(results))
    figure(results, out / "results.png")


def headline_table(results: dict) -> str:
    """A short plain-text table for the terminal: every method, mean over held-out sections."""
    n = results["config"]["panel"]["n_top"]
    k = results["config"]["eval"]["recall_k"]
    keys = [(f"panel/pearson_heg{n}", f"HEG-{n}"), ("pathway/pearson_hallmark", "Hallmark"),
            (f"recall@{k}_i2e", f"R@{k} i2e"), ("panel/mse", "MSE")]  # fmt: skip
    lines = [f"{'method':28s} {'kind':9s} " + " ".join(f"{h:>15s}" for _, h in keys)]
    for e in results["summary"]:
        if e["slide"] != "all":
            continue
        cells = []
        for key, _ in keys:
            v = e.get(key)
            cells.append(
                f"{v['mean']:7.3f} ± {v['std']:5.3f}"
                if isinstance(v, dict) and v["mean"] is not None
                else f"{'-':>15s}"
            )
        lines.append(f"{e['method']:28s} {e['kind']:9s} " + " ".join(cells))
    lines.append(f"total {results['timings_s'].get('total', float('nan')):.0f} s")
    return "\n".join(lines)
