"""Draw the workflow's rule graph as a PNG without Graphviz (for the README): ``snakemake --rulegraph``
parsed, rules placed in layers by their longest path from the sources, drawn with matplotlib.

Run from the repository root: ``.venv/bin/python workflow/scripts/rulegraph_png.py docs/img/workflow.png``
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

WHAT = {
    "read": "spots + counts -> .h5ad",
    "pair": "spot-patch pairing",
    "train": "dual encoder (train patients)",
    "embed": "image + expression embeddings",
    "predict": "expression from H&E",
    "evaluate": "held-out sections with truth",
    "index": "slide/region retrieval index",
    "report": "report.md",
    "all": "",
}


def rule_graph() -> tuple[dict[str, str], list[tuple[str, str]]]:
    dot = subprocess.run(
        [sys.executable, "-m", "snakemake", "--rulegraph", "--quiet", "all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    nodes = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"]+)\"", dot, flags=re.M))
    edges = [(nodes[a], nodes[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)]
    return nodes, edges


def layers(names: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    depth = dict.fromkeys(names, 0)
    for _ in names:  # longest path from a source (the graph is acyclic)
        for a, b in edges:
            depth[b] = max(depth[b], depth[a] + 1)
    return depth


def main(out: str) -> None:
    nodes, edges = rule_graph()
    names = [n for n in nodes.values() if n != "all"]
    edges = [(a, b) for a, b in edges if "all" not in (a, b)]
    depth = layers(names, edges)
    by_layer: dict[int, list[str]] = {}
    for name in names:
        by_layer.setdefault(depth[name], []).append(name)
    pos = {}
    for d, members in by_layer.items():
        for i, name in enumerate(sorted(members)):
            pos[name] = (d * 3.6, -(i - (len(members) - 1) / 2) * 1.3)
    fig, ax = plt.subplots(figsize=(14, 3.8))
    boxes = {
        name: ax.text(
            x,
            y,
            f"{name}\n{WHAT.get(name, '')}",
            ha="center",
            va="center",
            fontsize=8.5,
            bbox={"boxstyle": "round,pad=0.4", "fc": "#eef3fb", "ec": "#3b6ea8"},
        )
        for name, (x, y) in pos.items()
    }
    for a, b in edges:  # from the right edge of a's box to the left edge of b's
        ax.annotate(
            "",
            xy=(0.0, 0.5),
            xycoords=boxes[b],
            xytext=(1.0, 0.5),
            textcoords=boxes[a],
            arrowprops={"arrowstyle": "->", "color": "grey", "lw": 1.2, "shrinkA": 4, "shrinkB": 4},
        )
    xs, ys = zip(*pos.values(), strict=True)
    ax.set_xlim(min(xs) - 1.6, max(xs) + 1.6)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_axis_off()
    ax.set_title(
        "workflow/Snakefile: rules (one job per sample for read, pair, embed, predict, evaluate)", fontsize=9
    )
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img/workflow.png")
