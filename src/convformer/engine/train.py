"""The training loop: AdamW, linear warm-up then cosine decay, label smoothing, a run folder.

A run folder holds ``config.json`` (the resolved configuration), ``metrics.csv``/``metrics.json`` (one
row per epoch), ``curves.png`` and the checkpoints ``last.safetensors`` and ``best.safetensors``; each
file is written to a temporary name and renamed, so an interrupted run never leaves a broken file.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import build_image_data
from ..errors import ConvformerError
from ..registry import create_model, model_card
from ..weights import save_weights
from ..weights.io import atomic_write
from .config import TrainConfig, config_dict
from .evaluate import evaluate, resolve_device
from .metrics import MetricLog, topk_correct


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, scales and StarReLU scalars (every tensor of rank <= 1)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def run_folder(cfg: TrainConfig) -> Path:
    name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(cfg.output) / name
    if folder.exists() and any(folder.iterdir()):
        raise ConvformerError(f"run folder {folder} already exists and is not empty; choose another "
                              "--name or remove it")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def train(cfg: TrainConfig, progress: bool = True, log=print) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics and the run folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    card = model_card(cfg.model)
    img_size = cfg.img_size or (32 if cfg.data == "digits" else card.input_size[-1])
    pre = card.preprocessing
    data = build_image_data(cfg.data, img_size, mean=pre.get("mean"), std=pre.get("std"),
                            crop_pct=pre.get("crop_pct", 1.0), interpolation=pre.get("interpolation", "bicubic"))
    if len(data.train) == 0 or len(data.val) == 0:
        raise ConvformerError("the training or validation set is empty")
    device = resolve_device(cfg.device)
    model = create_model(cfg.model, pretrained=cfg.pretrained or False, num_classes=len(data.classes),
                         img_size=img_size, drop_path_rate=cfg.drop_path_rate).to(device)

    if cfg.precision not in ("fp32", "bf16"):
        raise ConvformerError(f"precision must be 'fp32' or 'bf16', got {cfg.precision!r}")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    folder = run_folder(cfg)
    resolved = {**config_dict(cfg), "img_size": img_size, "classes": data.classes,
                "torch": torch.__version__, "device": str(device)}
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=1)))

    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                              num_workers=cfg.workers, generator=gen)
    val_loader = DataLoader(data.val, batch_size=max(cfg.batch_size, 128), num_workers=cfg.workers)
    if len(train_loader) == 0:
        raise ConvformerError(f"batch size {cfg.batch_size} is larger than the training set "
                              f"({len(data.train)} images); lower --batch-size")
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total_steps = cfg.epochs * len(train_loader)
    warmup_steps = int(cfg.warmup_epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, cfg.min_lr / cfg.lr))

    meta = {"classes": json.dumps(data.classes), "mean": json.dumps(list(data.mean)),
            "std": json.dumps(list(data.std))}
    log_rows = MetricLog(folder)
    best, step, start = -1.0, 0, time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
        for images, target in bar:
            images, target = images.to(device), target.to(device)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise ConvformerError(f"loss became {loss.item()} at epoch {epoch}, step {step}; the last "
                                      f"good checkpoint is kept in {folder} (try a lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.item() * len(target)
            correct += topk_correct(logits.detach(), target, ks=(1,))[0]
            seen += len(target)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        val = evaluate(model, val_loader, device)
        row = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0],
               "train_loss": round(loss_sum / seen, 5), "train_top1": round(100.0 * correct / seen, 3),
               "val_loss": round(val["loss"], 5), "val_top1": round(val["top1"], 3),
               "val_top5": round(val["top5"], 3), "time_s": round(time.time() - start, 1)}
        log_rows.append(row)
        save_weights(model, folder / "last.safetensors", metadata={**meta, "epoch": str(epoch)})
        if val["top1"] > best:
            best = val["top1"]
            save_weights(model, folder / "best.safetensors", metadata={**meta, "epoch": str(epoch)})
        if progress:
            log(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                f"val top-1 {row['val_top1']:6.2f}%  ({row['time_s']:.0f}s)")
    log_rows.plot(folder / "curves.png")
    final = log_rows.rows[-1]
    return {"folder": str(folder), "val_top1": final["val_top1"], "val_top5": final["val_top5"],
            "best_top1": best, "epochs": cfg.epochs, "seconds": round(time.time() - start, 1),
            "val_count": val["count"]}
