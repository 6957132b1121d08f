"""The training loop: one process or many (torchrun), resumable exactly, and safe with bad input.

A run folder holds ``config.json`` (the resolved configuration), ``env.json`` (versions, devices),
``metrics.csv``/``metrics.json`` (one row per epoch), ``curves.png``, the weights ``last.safetensors``,
``best.safetensors`` (and ``ema.safetensors`` with EMA), and ``checkpoint.safetensors``: the full
training state (see :mod:`.state`). Every file is written to a temporary name and renamed, so a killed
run never leaves a broken file and the last good checkpoint is never replaced by a partial one.

Exact resume rests on one rule: nothing random depends on history. The data order is a function of
(seed, epoch) (:mod:`.sampler`), each sample is augmented under its own seed, and the generator that
drives stochastic depth, dropout and Mixup/CutMix is re-seeded from (seed, step, micro-batch, rank)
before every micro-batch. A run killed at any step and resumed from its checkpoint replays the same
computation and, on the CPU, ends with bit-identical weights.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from ..progress import progress_bar, write as progress_write

from ..errors import ConvformerError
from ..registry import create_model
from ..weights import save_weights
from ..fileio import atomic_write
from .config import TrainConfig, config_dict
from .distributed import Dist, setup, teardown
from .ema import ModelEma
from .tasks import ImageClassification
from .metrics import MetricLog
from .sampler import SeededDataset, StepBatches, mix_seed
from .state import load_train_state, read_train_state, save_train_state

# options that may differ when a run is resumed (they do not change the computation)
RESUME_OVERRIDABLE = {"resume", "threads", "workers", "device", "output", "tensorboard"}


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


def lr_factor(cfg, step: int, total: int, warmup: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base learning rate: warm-up then cosine (default), or warm-up then
    ``lr_decay`` per epoch (``lr_schedule="exponential"``, the pose papers' recipe)."""
    if getattr(cfg, "lr_schedule", "cosine") == "exponential":
        if step < warmup:
            return (step + 1) / warmup
        return cfg.lr_decay ** (step // steps_per_epoch)
    return warmup_cosine(step, total, warmup, cfg.min_lr / cfg.lr)


def run_folder(cfg: TrainConfig) -> Path:
    name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(cfg.output) / name
    if folder.exists() and any(folder.iterdir()):
        raise ConvformerError(f"run folder {folder} already exists and is not empty; choose another "
                              f"--name, remove it, or continue it with --resume {folder}")
    return folder


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, lr: float):
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if cfg.optimizer == "lamb":
        from timm.optim import Lamb
        return Lamb(groups, lr=lr)
    raise ConvformerError(f"optimizer must be 'adamw' or 'lamb', got {cfg.optimizer!r}")


def environment(device: torch.device, dist_: Dist) -> dict:
    import timm
    from .. import __version__
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "processor": platform.processor(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
           "convformer": __version__, "device": str(device), "world_size": dist_.world,
           "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _resume_config(cfg: TrainConfig, given: set[str]) -> tuple[TrainConfig, Path, dict, dict]:
    """The saved configuration of the run being resumed (plus allowed overrides) and its checkpoint."""
    tensors, meta = read_train_state(cfg.resume)
    path = Path(cfg.resume)
    folder = path if path.is_dir() else path.parent
    saved_file = folder / "config.json"
    if not saved_file.exists():
        raise ConvformerError(f"{saved_file} is missing; a run folder written by `convformer train` is needed "
                              "to resume")
    saved = json.loads(saved_file.read_text())
    known = {f.name for f in fields(type(cfg))}
    values = {k: v for k, v in saved.items() if k in known}
    for key in given:
        new = getattr(cfg, key)
        if key in RESUME_OVERRIDABLE:
            values[key] = new
        elif key != "preset" and new != values.get(key):
            what = "model" if key == "model" else f"--{key.replace('_', '-')}"
            raise ConvformerError(f"cannot resume {folder} with {what}={new!r}: the checkpoint was trained with "
                                  f"{values.get(key)!r} (a resumed run keeps its configuration)")
    arch = meta.get("architecture")
    if arch and arch != values["model"]:
        raise ConvformerError(f"checkpoint {folder} holds a {arch}, not a {values['model']}")
    values["resume"] = cfg.resume
    return type(cfg)(**values), folder, tensors, meta


def task_for(cfg):
    """The task a configuration trains: its ``task`` attribute, or image classification."""
    return cfg.task() if hasattr(cfg, "task") else ImageClassification()


def train(cfg: TrainConfig, progress: bool = True, log=print, given: set[str] | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics and the run folder.

    ``given`` names the options the user set explicitly (used to check a resume for conflicts)."""
    dist_, device = setup(cfg.device)
    try:
        return _train(cfg, dist_, device, progress and dist_.main, log if dist_.main else (lambda *_: None),
                      given or set())
    finally:
        teardown()


def _train(cfg: TrainConfig, dist_: Dist, device: torch.device, progress: bool, log, given: set[str]) -> dict:
    resume_state = None
    if cfg.resume:
        cfg, folder, tensors, meta = _resume_config(cfg, given)
        resume_state = (tensors, meta)
    if getattr(cfg, "lr_schedule", "cosine") not in ("cosine", "exponential"):
        raise ConvformerError(f"--lr-schedule must be 'cosine' or 'exponential', got {cfg.lr_schedule!r}")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ConvformerError(f"precision must be 'fp32', 'bf16' or 'fp16', got {cfg.precision!r}")
    if cfg.accum_steps < 1 or cfg.batch_size < 1:
        raise ConvformerError("--batch-size and --accum-steps must be at least 1")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)
    task = task_for(cfg)
    data = task.build(cfg, progress)
    if len(data.train) == 0 or len(data.val) == 0:
        raise ConvformerError("the training or validation set is empty")
    model = create_model(cfg.model, pretrained=(cfg.pretrained or False) if resume_state is None else False,
                         **data.model_kwargs)
    if getattr(cfg, "grad_checkpointing", False):
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConvformerError(f"{cfg.model} does not support --grad-checkpointing")
        model.set_grad_checkpointing(True)
    model.to(device)

    batches = StepBatches(len(data.train), cfg.batch_size, cfg.accum_steps, dist_.rank, dist_.world, cfg.seed)
    steps_per_epoch = batches.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConvformerError(f"a global batch of {batches.global_batch} (batch size x accumulation x processes) "
                              f"is larger than the training set ({len(data.train)} samples); lower --batch-size")
    lr = cfg.lr * batches.global_batch / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr
    optimizer = build_optimizer(cfg, model, lr)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    # where to start: fresh, or the checkpoint's position
    epoch, start_step, global_step, best, sums, skipped = 1, 0, 0, -math.inf, [0.0, 0.0, 0.0], 0
    if resume_state is not None:
        info = load_train_state(*resume_state, model, optimizer, ema, scaler)
        epoch, start_step, global_step = info["epoch"], info["step_in_epoch"], info["global_step"]
        best, sums, skipped = info["best_top1"], info["sums"], info.get("skipped", 0)
    elif dist_.main:
        folder = run_folder(cfg)
    else:  # only rank 0 checks and writes the folder
        folder = Path(cfg.output) / (cfg.name or "rank-local")
    if dist_.main:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a write that was killed
            stale.unlink(missing_ok=True)
        resolved = {**config_dict(cfg), **data.resolved, "task": task.name, "lr_effective": lr,
                    "global_batch": batches.global_batch, "steps_per_epoch": steps_per_epoch}
        if resume_state is None:
            atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=1)))
        atomic_write(folder / "env.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(environment(device, dist_), indent=1)))

    train_model = model
    if dist_.enabled:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    meta = data.meta
    log_rows = MetricLog(folder)
    if resume_state is not None and (folder / "metrics.json").exists():
        log_rows.rows = [r for r in json.loads((folder / "metrics.json").read_text()) if r["epoch"] < epoch]
    writer = _tensorboard(folder) if cfg.tensorboard and dist_.main else None
    val_loader = _val_loader(data.val, cfg, dist_, data.collate)
    train_set = SeededDataset(data.train)

    def checkpoint(next_epoch: int, step_in_epoch: int) -> None:
        if dist_.main:
            info = {"epoch": next_epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                    "best_top1": best, "sums": sums, "skipped": skipped, "model": cfg.model}
            save_train_state(folder / "checkpoint.safetensors", model, optimizer, ema, scaler, info)

    start_time = time.time()
    while epoch <= cfg.epochs:
        train_model.train()
        loader = DataLoader(train_set, batch_sampler=list(batches.micro_batches(epoch, start_step)),
                            num_workers=cfg.workers, collate_fn=data.collate)
        batch_iter = iter(loader)
        bar = progress_bar(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not progress, unit="step")
        tick = time.time()
        for step_in_epoch in range(start_step, steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(cfg, global_step, total_steps, warmup_steps, steps_per_epoch)
            optimizer.zero_grad(set_to_none=True)
            finite = True
            step_sums = [0.0, 0.0, 0.0]
            for micro in range(cfg.accum_steps):
                seed_parts = (cfg.seed, global_step, micro, dist_.rank)
                torch.manual_seed(mix_seed(*seed_parts))  # drop path, dropout
                inputs, labels, target = task.prepare(next(batch_iter), cfg, device, seed_parts)
                sync = train_model.no_sync() if dist_.enabled and micro < cfg.accum_steps - 1 else nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                        output = task.forward(train_model, inputs)
                    loss = task.loss(output, labels)
                    finite = finite and bool(torch.isfinite(loss))
                    scaler.scale(loss / cfg.accum_steps).backward()
                step_sums[0] += loss.item() * len(target)
                step_sums[1] += task.statistic(_detached(output), target)
                step_sums[2] += len(target)
            if dist_.any(not finite):
                if not cfg.skip_nonfinite:
                    kept = (f"the last good checkpoint in {folder} is kept" if (folder / "checkpoint.safetensors").exists()
                            else "no checkpoint had been written yet")
                    raise ConvformerError(
                        f"loss became {loss.item()} at epoch {epoch}, step {global_step + 1}; stopped without "
                        f"saving, {kept} (lower --lr, check the data, or pass --skip-nonfinite to skip such steps)")
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                if progress:
                    progress_write(f"warning: non-finite loss at step {global_step + 1}; step skipped ({skipped} so far)")
            else:
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                sums = [a + b for a, b in zip(sums, step_sums)]
            global_step += 1
            now = time.time()
            bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            per_s=f"{step_sums[2] * dist_.world / max(now - tick, 1e-9):.0f}")
            tick = now
            bar.update(1)
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), global_step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and step_in_epoch + 1 < steps_per_epoch:
                checkpoint(epoch, step_in_epoch + 1)
        bar.close()

        loss_sum, stat_sum, seen = dist_.sum(sums)
        val = _evaluate(task, model, val_loader, device, dist_)
        row = {"epoch": epoch, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": round(loss_sum / max(seen, 1), 5),
               f"train_{task.train_stat}": round(stat_sum / max(seen, 1), 3), "val_loss": round(val["loss"], 5),
               **{f"val_{k}": round(val[k], 3) for k in task.val_metrics}}
        if ema is not None:
            val_ema = _evaluate(task, ema.module, val_loader, device, dist_)
            row.update({f"ema_val_{k}": round(val_ema[k], 3) for k in task.val_metrics})
        row.update(skipped_steps=skipped, time_s=round(time.time() - start_time, 1))
        score = task.score(val)
        if dist_.main:
            log_rows.append(row)
            epoch_meta = {**meta, "epoch": str(epoch)}
            save_weights(model, folder / "last.safetensors", metadata=epoch_meta)
            if ema is not None:
                save_weights(ema.module, folder / "ema.safetensors", metadata=epoch_meta)
            if score > best:
                save_weights(model, folder / "best.safetensors", metadata=epoch_meta)
            if writer is not None:
                for key, value in row.items():
                    if key.startswith(("val_", "ema_val_", "train_")):  # per-step loss is logged above
                        tag = key.replace("_", "/", 1) if key.startswith(("val", "ema")) else f"epoch/{key}"
                        writer.add_scalar(tag, value, epoch)
                writer.flush()
        best = max(best, score)
        sums, start_step = [0.0, 0.0, 0.0], 0
        epoch += 1
        checkpoint(epoch, 0)
        if progress:
            log(f"epoch {row['epoch']:3d}  {task.summary(row)}  ({row['time_s']:.0f}s)")
        dist_.barrier()
    if writer is not None:
        writer.close()
    if dist_.main and log_rows.rows:
        log_rows.plot(folder / "curves.png", *task.curve)
    final = log_rows.rows[-1] if log_rows.rows else {}
    best_value = best if task.higher_is_better else -best
    return {"folder": str(folder), **{k: final.get(k) for k in final if k.startswith(("val_", "ema_val_"))},
            "ema_val_top1": final.get("ema_val_top1"), f"best_{task.best_metric}": best_value, "epochs": cfg.epochs,
            "seconds": round(time.time() - start_time, 1), "val_count": len(data.val), "skipped_steps": skipped,
            "main": dist_.main}


def _val_loader(val_set, cfg: TrainConfig, dist_: Dist, collate=None) -> DataLoader:
    subset = Subset(val_set, range(dist_.rank, len(val_set), dist_.world)) if dist_.enabled else val_set
    return DataLoader(subset, batch_size=max(cfg.batch_size, 128), num_workers=cfg.workers, collate_fn=collate)


def _detached(output):
    """A model output (a tensor or a tuple of tensors) cut from the graph, for statistics."""
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(o) for o in output)
    return output.detach() if isinstance(output, torch.Tensor) else output


def _evaluate(task, model, loader, device, dist_: Dist) -> dict:
    """The task's validation metrics over the whole validation set (each rank evaluates its share; the
    per-rank means are weighted by their counts and summed)."""
    part = task.evaluate(model, loader, device)
    n = part["count"] if len(loader.dataset) else 0
    keys = ("loss", *task.val_metrics)
    *sums, count = dist_.sum([part[k] * n for k in keys] + [n])
    count = max(count, 1)
    return {**{k: v / count for k, v in zip(keys, sums)}, "count": int(count)}


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConvformerError("--tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'convformer[tensorboard]')") from err
    return SummaryWriter(str(folder / "tensorboard"))
