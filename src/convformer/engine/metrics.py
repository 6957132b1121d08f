"""Classification metrics and the run folder's metric log (CSV + JSON + curve PNG)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from convformer.fileio import atomic_write


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    pred = logits.topk(k_max, dim=1).indices
    hits = pred.eq(target[:, None])
    return [int(hits[:, :min(k, k_max)].any(dim=1).sum()) for k in ks]


class MetricLog:
    """Per-epoch rows, rewritten atomically after each epoch as metrics.csv and metrics.json."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append(row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows[0].keys()))
        writer.writeheader()
        writer.writerows(self.rows)
        text = buf.getvalue()
        atomic_write(self.folder / "metrics.csv", lambda tmp: Path(tmp).write_text(text))
        atomic_write(self.folder / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(self.rows, indent=1)))

    def plot(self, path: Path, metric: str = "top1", label: str = "top-1", unit: str = "accuracy (%)") -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        epochs = [r["epoch"] for r in self.rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(epochs, [r["train_loss"] for r in self.rows], label="train")
        ax1.plot(epochs, [r["val_loss"] for r in self.rows], label="val")
        ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
        ax2.plot(epochs, [r[f"val_{metric}"] for r in self.rows], label=f"val {label}")
        if all(f"train_{metric}" in r for r in self.rows):  # a task whose running statistic is this metric
            ax2.plot(epochs, [r[f"train_{metric}"] for r in self.rows], label=f"train {label}")
        if all(f"ema_val_{metric}" in r for r in self.rows):
            ax2.plot(epochs, [r[f"ema_val_{metric}"] for r in self.rows], label=f"EMA val {label}")
        ax2.set_xlabel("epoch"), ax2.set_ylabel(unit), ax2.legend(), ax2.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
