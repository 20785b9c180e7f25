"""What a run logs: ``metrics.csv`` (training steps), ``val_metrics.csv`` (epochs) and TensorBoard."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

__all__ = ["MetricLogger"]

log = logging.getLogger("histokg.train.trainer")  # the trainer's logger, as before the split


class MetricLogger:
    """CSV (training steps and validation epochs) and TensorBoard, from the main process only."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.out = out
        if not enabled:
            return
        self.train_csv = out / "metrics.csv"
        self.val_csv = out / "val_metrics.csv"
        for path in (self.train_csv, self.val_csv):
            _truncate_csv(path, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step if resume_step else None)

    def train(self, row: dict, log_now: bool) -> None:
        if not self.enabled:
            return
        _append_csv(self.train_csv, row)
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.tb.add_scalar(f"train/{k}", v, row["step"])
        if log_now:
            log.info(
                "step %d: loss %.4f lr %.2e temperature %.4f",
                row["step"],
                row["loss"],
                row["lr"],
                row["temperature"],
            )

    def val(self, row: dict) -> None:
        if not self.enabled:
            return
        _append_csv(self.val_csv, row)
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.tb.add_scalar(f"val/{k}", v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a resumed run logs them again)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    path.unlink()
    for r in keep:
        _append_csv(path, r)


def write_summary(out: Path, loop, seconds: float, metric: str, train_slides: list, val_slides: list) -> None:
    """``summary.json`` of a finished run: best metric (null when nothing improved: JSON has no
    -Infinity), steps, wall time, early stopping, the validation history and the slides."""
    import math

    from histokg.io import write_json

    best = loop.best_metric
    write_json(
        Path(out) / "summary.json",
        {
            "best_metric": best if math.isfinite(best) else None,
            "metric": metric,
            "steps": loop.step,
            "seconds": seconds,
            "stopped_early": loop.stopped_early,
            "history": loop.history,
            "train_slides": train_slides,
            "val_slides": val_slides,
        },
    )
