"""What the training loop needs to know about a task, so that one loop (:mod:`.train`) trains every system.

The loop owns everything that is the same for all systems: the data order, micro-batches and DDP,
optimizer and schedule, EMA, mixed precision, checkpoints and exact resume, NaN handling, run folders
and logs. A task supplies the rest: its data sets, the model's extra arguments, the loss, one running
training statistic, and the validation metrics with the one that picks ``best.safetensors``.

Each system brings its own task (``vision.task.ImageClassification``, ``sr.task.SuperResolution``,
``pose.task.PoseLifting``, ``asr.task.SpeechRecognition``) through its configuration's ``task()`` method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from convformer.errors import ConvformerError


@dataclass
class TaskData:
    train: Dataset
    val: Dataset
    model_kwargs: dict                                   # extra create_model arguments
    resolved: dict = field(default_factory=dict)         # added to the run's config.json
    meta: dict = field(default_factory=dict)             # string metadata stored in every weight file
    collate: Optional[Callable] = None                   # batches items of different sizes (None: stack)
    val_collate: Optional[Callable] = None               # the validation set's, where it differs (None: collate)


class Task:
    """Interface; see ``convformer.vision.task.ImageClassification`` for a complete example."""
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


def __getattr__(name):  # ImageClassification moved to convformer.vision.task (deprecated aliases)
    from convformer._aliases import moved_name
    return moved_name(__name__, name)
