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

from convformer.errors import ConvformerError
from convformer.registry import create_model
from convformer.weights import save_weights
from convformer.fileio import atomic_write
from convformer.progress import progress_bar, write as progress_write
from convformer.engine.config import EngineOptions, config_dict
from convformer.engine.distributed import Dist, setup, teardown
from convformer.engine.ema import ModelEma
from convformer.engine.metrics import MetricLog
from convformer.engine.sampler import SeededDataset, StepBatches, mix_seed
from convformer.engine.state import load_train_state, read_train_state, save_train_state

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


LR_SCHEDULES = ("cosine", "exponential", "constant")


def lr_factor(cfg, step: int, total: int, warmup: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base learning rate: warm-up then cosine (default), warm-up then
    ``lr_decay`` per epoch (``lr_schedule="exponential"``, the pose papers' recipe), or warm-up then the
    base rate throughout (``"constant"``, super-resolution's recipe)."""
    schedule = getattr(cfg, "lr_schedule", "cosine")
    if schedule in ("exponential", "constant"):
        if step < warmup:
            return (step + 1) / warmup
        return cfg.lr_decay ** (step // steps_per_epoch) if schedule == "exponential" else 1.0
    return warmup_cosine(step, total, warmup, cfg.min_lr / cfg.lr)


def run_folder(cfg: EngineOptions) -> Path:
    name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(cfg.output) / name
    if folder.exists() and any(folder.iterdir()):
        raise ConvformerError(f"run folder {folder} already exists and is not empty; choose another "
                              f"--name, remove it, or continue it with --resume {folder}")
    return folder


def build_optimizer(cfg: EngineOptions, model: torch.nn.Module, lr: float):
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "lamb":
        from timm.optim import Lamb
        return Lamb(groups, lr=lr, betas=tuple(cfg.betas))
    raise ConvformerError(f"optimizer must be 'adamw' or 'lamb', got {cfg.optimizer!r}")


def environment(device: torch.device, dist_: Dist) -> dict:
    import timm
    from convformer import __version__
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "processor": platform.processor(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
           "convformer": __version__, "device": str(device), "world_size": dist_.world,
           "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _resume_config(cfg: EngineOptions, given: set[str]) -> tuple[EngineOptions, Path, dict, dict]:
    """The saved configuration of the run being resumed (plus allowed overrides) and its checkpoint."""
    tensors, meta = read_train_state(cfg.resume)
    path = Path(cfg.resume)
    folder = path if path.is_dir() else path.parent
    saved_file = folder / "config.json"
    if not saved_file.exists():
        raise ConvformerError(f"{saved_file} is missing; a run folder written by `convformer train` is needed "
                              "to resume")
    saved = json.loads(saved_file.read_text())
    if "task" not in saved:  # e.g. a super-resolution run of the loop SR had before 0.2
        raise ConvformerError(f"{folder} was not written by the training engine (its config.json names no task), "
                              f"so it cannot be resumed; start a new run (--pretrained {folder / 'last.safetensors'} "
                              "starts from its weights)")
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
    """The task a configuration trains: every training configuration names it with ``task()``."""
    if not hasattr(cfg, "task"):
        raise ConvformerError(f"{type(cfg).__name__} has no task(); a training configuration must say what it trains")
    return cfg.task()


def check_options(cfg) -> None:
    """Options the loop itself interprets, checked before anything is built."""
    if getattr(cfg, "lr_schedule", "cosine") not in LR_SCHEDULES:
        raise ConvformerError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ConvformerError(f"precision must be 'fp32', 'bf16' or 'fp16', got {cfg.precision!r}")
    if cfg.accum_steps < 1 or cfg.batch_size < 1:
        raise ConvformerError("--batch-size and --accum-steps must be at least 1")


def train(cfg: EngineOptions, progress: bool = True, log=print, given: set[str] | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` with the task ``cfg.task()``; returns the final metrics and the
    run folder. ``given`` names the options the user set explicitly (used to check a resume for conflicts)."""
    dist_, device = setup(cfg.device)
    try:
        run = Run(cfg, dist_, device, progress and dist_.main, log if dist_.main else (lambda *_: None), given or set())
        return run.fit()
    finally:
        teardown()


class Run:
    """One training run. The loop reads as its steps: :meth:`__init__` builds (options, task, data, model,
    optimizer), :meth:`_start` finds where to begin (fresh or a checkpoint's position) and opens the run
    folder, :meth:`fit` runs the epochs, :meth:`_epoch` their optimizer steps, :meth:`_step` one step's
    micro-batches, :meth:`_end_epoch` evaluates and saves, :meth:`_result` reports."""

    def __init__(self, cfg, dist_: Dist, device: torch.device, progress: bool, log, given: set[str]):
        self.resume_state = None
        if cfg.resume:
            cfg, self.folder, tensors, meta = _resume_config(cfg, given)
            self.resume_state = (tensors, meta)
        check_options(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.cfg, self.dist, self.device, self.progress, self.log = cfg, dist_, device, progress, log
        self.task = task_for(cfg)
        self.data = self.task.build(cfg, progress)
        if len(self.data.train) == 0 or len(self.data.val) == 0:
            raise ConvformerError("the training or validation set is empty")
        self.model = self._build_model()
        self._build_optimization()

    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        pretrained = (cfg.pretrained or False) if self.resume_state is None else False
        model = create_model(cfg.model, pretrained=pretrained, **self.data.model_kwargs)
        if getattr(cfg, "grad_checkpointing", False):
            if not hasattr(model, "set_grad_checkpointing"):
                raise ConvformerError(f"{cfg.model} does not support --grad-checkpointing")
            model.set_grad_checkpointing(True)
        return model.to(self.device)

    def _build_optimization(self) -> None:
        """Data order, optimizer, EMA, loss scaling and the learning-rate schedule."""
        cfg, dist_ = self.cfg, self.dist
        self.batches = StepBatches(len(self.data.train), cfg.batch_size, cfg.accum_steps, dist_.rank, dist_.world,
                                   cfg.seed)
        self.steps_per_epoch = self.batches.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ConvformerError(f"a global batch of {self.batches.global_batch} (batch size x accumulation x "
                                  f"processes) is larger than the training set ({len(self.data.train)} samples); "
                                  "lower --batch-size")
        global_batch = self.batches.global_batch
        self.lr = cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr
        self.optimizer = build_optimizer(cfg, self.model, self.lr)
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_per_epoch)

    def _start(self) -> None:
        """The position to start from (fresh, or the checkpoint's) and the run folder with its config."""
        cfg, dist_ = self.cfg, self.dist
        self.epoch, self.start_step, self.global_step, self.best, self.skipped = 1, 0, 0, -math.inf, 0
        self.sums = [0.0, 0.0, 0.0]  # loss, statistic and sample count of the epoch so far
        if self.resume_state is not None:
            info = load_train_state(*self.resume_state, self.model, self.optimizer, self.ema, self.scaler)
            self.epoch, self.start_step, self.global_step = info["epoch"], info["step_in_epoch"], info["global_step"]
            self.best = info.get("best_score", info.get("best_top1"))  # best_top1: checkpoints before 0.2
            self.sums, self.skipped = info["sums"], info.get("skipped", 0)
        elif dist_.main:
            self.folder = run_folder(cfg)
        else:  # only rank 0 checks and writes the folder
            self.folder = Path(cfg.output) / (cfg.name or "rank-local")
        if dist_.main:
            self._write_run_files()
        self.log_rows = MetricLog(self.folder)
        if self.resume_state is not None and (self.folder / "metrics.json").exists():
            saved = json.loads((self.folder / "metrics.json").read_text())
            self.log_rows.rows = [r for r in saved if r["epoch"] < self.epoch]

    def _write_run_files(self) -> None:
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a write that was killed
            stale.unlink(missing_ok=True)
        resolved = {**config_dict(self.cfg), **self.data.resolved, "task": self.task.name, "lr_effective": self.lr,
                    "global_batch": self.batches.global_batch, "steps_per_epoch": self.steps_per_epoch}
        if self.resume_state is None:
            atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=1)))
        atomic_write(folder / "env.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(environment(self.device, self.dist), indent=1)))

    def fit(self) -> dict:
        self._start()
        cfg, dist_ = self.cfg, self.dist
        self.train_model = self.model
        if dist_.enabled:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.writer = _tensorboard(self.folder) if cfg.tensorboard and dist_.main else None
        self.val_loader = _val_loader(self.data.val, cfg, dist_, self.data.val_collate or self.data.collate)
        self.train_set = SeededDataset(self.data.train)
        self.start_time = time.time()
        while self.epoch <= cfg.epochs:
            self._epoch()
            row = self._end_epoch()
            if self.progress:
                self.log(f"epoch {row['epoch']:3d}  {self.task.summary(row)}  ({row['time_s']:.0f}s)")
            dist_.barrier()
        if self.writer is not None:
            self.writer.close()
        if dist_.main and self.log_rows.rows:
            self.log_rows.plot(self.folder / "curves.png", *self.task.curve)
        return self._result()

    def _epoch(self) -> None:
        """The optimizer steps of one epoch, from ``start_step`` (non-zero when resumed mid-epoch)."""
        cfg = self.cfg
        self.train_model.train()
        loader = DataLoader(self.train_set, batch_sampler=list(self.batches.micro_batches(self.epoch, self.start_step)),
                            num_workers=cfg.workers, collate_fn=self.data.collate)
        batch_iter = iter(loader)
        bar = progress_bar(total=self.steps_per_epoch, initial=self.start_step, desc=f"epoch {self.epoch}/{cfg.epochs}",
                           leave=False, disable=not self.progress, unit="step")
        tick = time.time()
        for step_in_epoch in range(self.start_step, self.steps_per_epoch):
            loss, seen = self._step(batch_iter)
            self.global_step += 1
            now = time.time()
            bar.set_postfix(loss=f"{self.sums[0] / max(self.sums[2], 1):.3f}",
                            lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                            per_s=f"{seen * self.dist.world / max(now - tick, 1e-9):.0f}")
            tick = now
            bar.update(1)
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, self.global_step)
                self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.global_step)
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 \
                    and step_in_epoch + 1 < self.steps_per_epoch:
                self._checkpoint(self.epoch, step_in_epoch + 1)
        bar.close()

    def _step(self, batch_iter) -> tuple[float, int]:
        """One optimizer step over ``accum_steps`` micro-batches; a non-finite loss stops the run (or, with
        --skip-nonfinite, skips the step). Returns the last micro-batch's loss and the samples seen."""
        cfg, dist_, task = self.cfg, self.dist, self.task
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * lr_factor(cfg, self.global_step, self.total_steps, self.warmup_steps,
                                              self.steps_per_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        finite, step_sums = True, [0.0, 0.0, 0.0]
        for micro in range(cfg.accum_steps):
            seed_parts = (cfg.seed, self.global_step, micro, dist_.rank)
            torch.manual_seed(mix_seed(*seed_parts))  # drop path, dropout
            inputs, labels, target = task.prepare(next(batch_iter), cfg, self.device, seed_parts)
            last = micro == cfg.accum_steps - 1
            sync = self.train_model.no_sync() if dist_.enabled and not last else nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                    enabled=self.amp_dtype is not None):
                    output = task.forward(self.train_model, inputs)
                loss = task.loss(output, labels)
                finite = finite and bool(torch.isfinite(loss))
                self.scaler.scale(loss / cfg.accum_steps).backward()
            step_sums[0] += loss.item() * len(target)
            step_sums[1] += task.statistic(_detached(output), target)
            step_sums[2] += len(target)
        if dist_.any(not finite):
            self._skip_nonfinite(loss)
        else:
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
            self.sums = [a + b for a, b in zip(self.sums, step_sums)]
        return loss.item(), step_sums[2]

    def _skip_nonfinite(self, loss: torch.Tensor) -> None:
        folder = self.folder
        if not self.cfg.skip_nonfinite:
            kept = (f"the last good checkpoint in {folder} is kept" if (folder / "checkpoint.safetensors").exists()
                    else "no checkpoint had been written yet")
            raise ConvformerError(
                f"loss became {loss.item()} at epoch {self.epoch}, step {self.global_step + 1}; stopped without "
                f"saving, {kept} (lower --lr, check the data, or pass --skip-nonfinite to skip such steps)")
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        if self.progress:
            progress_write(f"warning: non-finite loss at step {self.global_step + 1}; step skipped "
                           f"({self.skipped} so far)")

    def _end_epoch(self) -> dict:
        """Validate (and the EMA), log the epoch's row, save last/best/ema weights, checkpoint."""
        task, dist_ = self.task, self.dist
        loss_sum, stat_sum, seen = dist_.sum(self.sums)
        val = _evaluate(task, self.model, self.val_loader, self.device, dist_)
        row = {"epoch": self.epoch, "step": self.global_step, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": round(loss_sum / max(seen, 1), 5),
               f"train_{task.train_stat}": round(stat_sum / max(seen, 1), 5), "val_loss": round(val["loss"], 5),
               **{f"val_{k}": round(val[k], 5) for k in task.val_metrics}}
        if self.ema is not None:
            val_ema = _evaluate(task, self.ema.module, self.val_loader, self.device, dist_)
            row.update({f"ema_val_{k}": round(val_ema[k], 5) for k in task.val_metrics})
        row.update(skipped_steps=self.skipped, time_s=round(time.time() - self.start_time, 1))
        score = task.score(val)
        if dist_.main:
            self._save_epoch(row, score)
        self.best = max(self.best, score)
        self.sums, self.start_step = [0.0, 0.0, 0.0], 0
        self.epoch += 1
        self._checkpoint(self.epoch, 0)
        return row

    def _save_epoch(self, row: dict, score: float) -> None:
        folder = self.folder
        self.log_rows.append(row)
        epoch_meta = {**self.data.meta, "epoch": str(self.epoch)}
        save_weights(self.model, folder / "last.safetensors", metadata=epoch_meta)
        if self.ema is not None:
            save_weights(self.ema.module, folder / "ema.safetensors", metadata=epoch_meta)
        if score > self.best:
            save_weights(self.model, folder / "best.safetensors", metadata=epoch_meta)
        if self.writer is not None:
            for key, value in row.items():
                if key.startswith(("val_", "ema_val_", "train_")):  # per-step loss is logged in _epoch
                    tag = key.replace("_", "/", 1) if key.startswith(("val", "ema")) else f"epoch/{key}"
                    self.writer.add_scalar(tag, value, self.epoch)
            self.writer.flush()

    def _checkpoint(self, next_epoch: int, step_in_epoch: int) -> None:
        if self.dist.main:
            info = {"epoch": next_epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
                    "best_score": self.best, "sums": self.sums, "skipped": self.skipped, "model": self.cfg.model}
            save_train_state(self.folder / "checkpoint.safetensors", self.model, self.optimizer, self.ema,
                             self.scaler, info)

    def _result(self) -> dict:
        """The last epoch's validation metrics (``val_<metric>``, ``ema_val_<metric>`` with EMA), the best
        score as ``best_<metric>`` and ``best`` (its name in ``metric``), and the run's facts."""
        final = self.log_rows.rows[-1] if self.log_rows.rows else {}
        task = self.task
        best_value = self.best if task.higher_is_better else -self.best
        return {"folder": str(self.folder), **{k: final.get(k) for k in final if k.startswith(("val_", "ema_val_"))},
                "metric": task.best_metric, "best": best_value, f"best_{task.best_metric}": best_value,
                "epochs": self.cfg.epochs, "steps": self.global_step, "seconds": round(time.time() - self.start_time, 1),
                "val_count": len(self.data.val), "skipped_steps": self.skipped, "main": self.dist.main}


def _val_loader(val_set, cfg: EngineOptions, dist_: Dist, collate=None) -> DataLoader:
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
