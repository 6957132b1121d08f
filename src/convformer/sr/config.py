"""`convformer sr train`: the super-resolution training configuration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from convformer.engine.config import EngineOptions
from convformer.errors import ConvformerError


@dataclass
class SRTrainConfig(EngineOptions):
    """The engine's options plus the SR data's. Training counts optimizer steps; to the engine an "epoch"
    is ``eval_every`` steps (one validation, one row of metrics, one set of weight files)."""
    model: str = "cfsr_x2"
    data: str = "photos"                 # "photos" (scikit-image's bundled photos) or a folder of HR images
    val: Optional[str] = None            # folder of HR validation images [photos: the held-out photos]
    data_lr: Optional[str] = None        # folder of given LR images paired with --data (else bicubic)
    val_lr: Optional[str] = None         # folder of given LR images paired with --val (else bicubic)
    train_photos: str = "astronaut,coffee,rocket"   # with data=photos: the photos to train on (others: val)
    steps: int = 2000
    batch_size: int = 16
    patch: int = 48                      # LR patch size (HR patches are patch * scale)
    lr: float = 2e-4
    betas: tuple = (0.9, 0.99)           # Adam's, as the SR papers train
    weight_decay: float = 0.0            # with AdamW's decoupled decay at 0, plain Adam
    lr_schedule: str = "constant"
    lr_decay: float = 1.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    ema_decay: Optional[float] = 0.999
    eval_every: int = 250
    checkpoint_every: int = 250

    @property
    def epochs(self) -> int:
        if self.eval_every < 1 or self.steps < 1 or self.steps % self.eval_every:
            raise ConvformerError(f"--steps ({self.steps}) must be a positive multiple of --eval-every "
                                  f"({self.eval_every})")
        return self.steps // self.eval_every

    def task(self):
        from convformer.sr.task import SuperResolution
        return SuperResolution()
