"""`convformer train` / `convformer evaluate`: the image-classification configurations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from convformer.engine.config import EngineOptions


@dataclass
class TrainConfig(EngineOptions):
    model: str = "convformer_nano"
    data: str = "digits"                 # "digits" or a folder with train/ and val/ class folders
    img_size: Optional[int] = None       # None: 32 for digits, the model card's size otherwise
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 3.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.05
    channels_last: bool = False          # feed images in channels-last memory format
    grad_checkpointing: bool = False     # recompute block activations in backward to save memory
    mixup: float = 0.0                   # Mixup alpha (0 = off)
    cutmix: float = 0.0                  # CutMix alpha (0 = off)
    randaugment: Optional[str] = None    # timm RandAugment policy, e.g. "rand-m9-mstd0.5-inc1" (image folders)
    random_erasing: float = 0.0          # random-erasing probability
    head_dropout: float = 0.0            # dropout before the classifier
    num_classes: Optional[int] = None    # must match the data's classes; set it to say "new head" explicitly
    skip_bad_images: bool = False        # drop unreadable images (with a warning) instead of stopping
    preset: Optional[str] = None         # a recipe from convformer.vision.presets (see --help)
    model_kwargs: Optional[dict] = None  # more model options, e.g. {"mixers": ["sepconv", ...], "dims": [...]}

    def task(self):
        from convformer.vision.task import ImageClassification
        return ImageClassification()

    @staticmethod
    def preset_values(preset: str, model: Optional[str]) -> dict:
        from convformer.vision.presets import preset_values
        return preset_values(preset, model)


@dataclass
class EvalConfig:
    weights: str = ""
    model: Optional[str] = None          # read from the weight file's metadata when omitted
    data: str = "digits"
    img_size: Optional[int] = None
    batch_size: int = 128
    workers: int = 0
    device: str = "auto"
