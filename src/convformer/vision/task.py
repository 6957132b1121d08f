"""Image classification as a task of the training engine: image folders or digits, cross-entropy with
label smoothing, Mixup/CutMix, top-1/top-5."""
from __future__ import annotations

import json

import torch

from convformer.engine.metrics import topk_correct
from convformer.engine.sampler import mix_seed, seeded
from convformer.engine.tasks import Task, TaskData, model_options
from convformer.errors import ConvformerError
from convformer.vision.evaluate import evaluate


class ImageClassification(Task):
    name = "classification"
    train_stat = "top1"
    val_metrics = ("top1", "top5")
    best_metric = "top1"

    def build(self, cfg, progress: bool) -> TaskData:
        from convformer.vision.data import build_image_data
        from convformer.registry import model_card
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
