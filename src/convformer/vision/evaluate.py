"""Evaluation loop: loss, top-1 and top-5 over a data loader."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convformer.progress import progress_bar

from convformer.engine.distributed import resolve_device  # noqa: F401  (its home before 0.2)
from convformer.engine.metrics import topk_correct


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, progress: bool = False) -> dict:
    model.eval()
    total, loss_sum, top1, top5 = 0, 0.0, 0, 0
    for images, target in progress_bar(loader, desc="eval", leave=False, disable=not progress):
        images, target = images.to(device), target.to(device)
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        c1, c5 = topk_correct(logits, target)
        top1, top5, total = top1 + c1, top5 + c5, total + len(target)
    total = max(total, 1)
    return {"loss": loss_sum / total, "top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total,
            "count": total}
