"""What the training loop needs to know about a task, so that one loop (:mod:`.train`) trains every system.

The loop owns everything that is the same for all systems: the data order, micro-batches and DDP,
optimizer and schedule, EMA, mixed precision, checkpoints and exact resume, NaN handling, run folders
and logs. A task supplies the rest: its data sets, the model's extra arguments, the loss, one running
training statistic, and the validation metrics with the one that picks ``best.safetensors``.

Tasks: :class:`ImageClassification` (here), ``engine.pose.PoseLifting`` and ``engine.asr.SpeechRecognition``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from ..errors import ConvformerError
from .evaluate import evaluate
from .metrics import topk_correct
from .sampler import mix_seed, seeded


@dataclass
class TaskData:
    train: Dataset
    val: Dataset
    model_kwargs: dict                                   # extra create_model arguments
    resolved: dict = field(default_factory=dict)         # added to the run's config.json
    meta: dict = field(default_factory=dict)             # string metadata stored in every weight file
    collate: Optional[Callable] = None                   # batches items of different sizes (None: stack)


class Task:
    """Interface; see :class:`ImageClassification` for a complete example."""
    name = "task"
    train_stat = "stat"          # the running statistic logged as train_<name>
    val_metrics: tuple = ()      # validation metrics logged as val_<name> (and ema_val_<name>)
    best_metric = ""             # the one that chooses best.safetensors
    higher_is_better = True
    curve = ("top1", "top-1", "accuracy (%)")   # (metric, label, axis title) of curves.png's second panel

    def build(self, cfg, progress: bool) -> TaskData:
        raise NotImplementedError

    def prepare(self, batch, cfg, device, seed_parts: tuple):
        """A loader batch -> (model inputs, loss targets, targets for the statistic). Any randomness
        must be drawn under ``mix_seed(*seed_parts, ...)`` (see :mod:`.sampler`) to keep resume exact."""
        inputs, target = batch
        return inputs.to(device), target.to(device), target.to(device)

    def forward(self, model, inputs):
        """Run the model on what :meth:`prepare` returned as inputs."""
        return model(inputs)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def statistic(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """Sum over the batch of the running training statistic (divided by the sample count later)."""
        raise NotImplementedError

    def evaluate(self, model, loader, device) -> dict:
        """{"loss", each of val_metrics, "count"} as means over the loader (the loop sums across ranks)."""
        raise NotImplementedError

    def score(self, val: dict) -> float:
        """Higher is better, whatever the metric's direction."""
        value = val[self.best_metric]
        return value if self.higher_is_better else -value

    def summary(self, row: dict) -> str:
        return "  ".join(f"{k} {v}" for k, v in row.items() if k.startswith(("train_", "val_", "ema_")))


def model_options(cfg, task_kwargs: dict) -> dict:
    """The user's ``model_kwargs`` (config file or --model-kwargs); the options the task already sets from
    the data or from flags stay with those, so one value never has two sources."""
    extra = dict(getattr(cfg, "model_kwargs", None) or {})
    taken = sorted(set(extra) & (set(task_kwargs) | {"pretrained", "features_only"}))
    if taken:
        raise ConvformerError(f"model_kwargs may not set {taken}: the data or a flag sets them "
                              "(--num-classes, --img-size, --drop-path-rate, --head-dropout)")
    return extra


class ImageClassification(Task):
    name = "classification"
    train_stat = "top1"
    val_metrics = ("top1", "top5")
    best_metric = "top1"

    def build(self, cfg, progress: bool) -> TaskData:
        from ..data import build_image_data
        from ..registry import model_card
        card = model_card(cfg.model)
        if card.task != "classification":
            command = {"pose": "`convformer pose train`", "super-resolution": "`convformer sr train`"}.get(
                card.task, "its own command (speech: not in the CLI yet, see docs/asr.md)")
            raise ConvformerError(f"{cfg.model} is a {card.task} model; train it with {command}")
        img_size = cfg.img_size or (32 if cfg.data == "digits" else card.input_size[-1])
        pre = card.preprocessing
        data = build_image_data(cfg.data, img_size, mean=pre.get("mean"), std=pre.get("std"),
                                crop_pct=pre.get("crop_pct", 1.0), interpolation=pre.get("interpolation", "bicubic"),
                                randaugment=cfg.randaugment, random_erasing=cfg.random_erasing, scan=True,
                                skip_bad_images=cfg.skip_bad_images, progress=progress)
        num_classes = len(data.classes)
        if cfg.num_classes is not None and cfg.num_classes != num_classes:
            raise ConvformerError(f"--num-classes {cfg.num_classes} but {cfg.data} has {num_classes} classes")
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:  # soft targets (smoothing applied by Mixup itself)
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                               num_classes=num_classes)
            self.loss_fn = SoftTargetCrossEntropy()
        kwargs = dict(num_classes=num_classes, img_size=img_size, drop_path_rate=cfg.drop_path_rate,
                      drop_rate=cfg.head_dropout)
        extra = model_options(cfg, kwargs)
        meta = {"classes": json.dumps(data.classes), "mean": json.dumps(list(data.mean)),
                "std": json.dumps(list(data.std)), "img_size": str(img_size)}
        if extra:  # so that evaluate/predict/export rebuild the same network from the weight file
            meta["model_kwargs"] = json.dumps(extra)
        return TaskData(data.train, data.val, {**kwargs, **extra},
                        resolved={"img_size": img_size, "classes": data.classes}, meta=meta)

    def prepare(self, batch, cfg, device, seed_parts: tuple):
        images, target = batch
        images, target = images.to(device), target.to(device)
        labels = target
        if self.mixup is not None:
            with seeded(mix_seed(*seed_parts, 7)):
                images, labels = self.mixup(images, target)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels, target

    def loss(self, output, target):
        return self.loss_fn(output.float(), target)

    def statistic(self, output, target) -> float:
        return 100.0 * topk_correct(output.detach(), target, ks=(1,))[0]

    def evaluate(self, model, loader, device) -> dict:
        return evaluate(model, loader, device)

    def summary(self, row: dict) -> str:
        ema = f"  EMA top-1 {row['ema_val_top1']:6.2f}%" if "ema_val_top1" in row else ""
        return (f"train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                f"val top-1 {row['val_top1']:6.2f}%{ema}")
