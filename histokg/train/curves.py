"""``curves.png`` of a run: training loss and temperature by step, validation metrics by epoch."""

from __future__ import annotations

from pathlib import Path

from histokg.io import atomic_path

__all__ = ["plot_curves"]


def plot_curves(out: Path) -> Path | None:
    """``curves.png``: training loss and temperature by step, validation metrics by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not (out / "metrics.csv").exists():
        return None
    tr = pd.read_csv(out / "metrics.csv")
    va = pd.read_csv(out / "val_metrics.csv") if (out / "val_metrics.csv").exists() else None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(tr["step"], tr["loss"], lw=0.8)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    axes[1].plot(tr["step"], tr["temperature"], lw=0.8, color="tab:orange")
    axes[1].set(xlabel="step", ylabel="temperature", title="learned temperature")
    if va is not None and len(va):
        for col in ("recall@1", "recall@5", "recall@10", "pearson"):
            axes[2].plot(va["epoch"], va[col], marker="o", label=col)
        if "chance_recall@5" in va:
            axes[2].plot(va["epoch"], va["chance_recall@5"], ls="--", color="grey", label="chance recall@5")
        axes[2].set(xlabel="epoch", title="validation (held-out slide)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
