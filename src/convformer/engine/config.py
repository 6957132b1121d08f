"""Run configuration as dataclasses; defaults < config file (YAML/JSON) < command-line flags."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import ConvformerError


@dataclass
class TrainConfig:
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
    grad_clip: Optional[float] = None
    precision: str = "fp32"              # "fp32", "bf16" (autocast) or "fp16" (autocast + loss scaling)
    channels_last: bool = False          # feed images in channels-last memory format
    grad_checkpointing: bool = False     # recompute block activations in backward to save memory
    optimizer: str = "adamw"             # "adamw" or "lamb"
    lr_base_batch: Optional[int] = None  # lr is for this global batch; scaled linearly to the real one
    accum_steps: int = 1                 # micro-batches per optimizer step (gradient accumulation)
    ema_decay: Optional[float] = None    # EMA of weights (e.g. 0.9998), evaluated beside the raw weights
    mixup: float = 0.0                   # Mixup alpha (0 = off)
    cutmix: float = 0.0                  # CutMix alpha (0 = off)
    randaugment: Optional[str] = None    # timm RandAugment policy, e.g. "rand-m9-mstd0.5-inc1" (image folders)
    random_erasing: float = 0.0          # random-erasing probability
    head_dropout: float = 0.0            # dropout before the classifier
    num_classes: Optional[int] = None    # must match the data's classes; set it to say "new head" explicitly
    checkpoint_every: int = 0            # also checkpoint every N optimizer steps (0: at epoch ends only)
    resume: Optional[str] = None         # run folder (or its checkpoint.safetensors) to continue
    skip_nonfinite: bool = False         # skip steps whose loss is NaN/Inf instead of stopping
    skip_bad_images: bool = False        # drop unreadable images (with a warning) instead of stopping
    deterministic: bool = False          # deterministic algorithms (bitwise-reproducible on CPU)
    tensorboard: bool = False            # also write TensorBoard event files to the run folder
    preset: Optional[str] = None         # a recipe from convformer.engine.presets (see --help)
    pretrained: Optional[str] = None     # weight file or tag to fine-tune from (new head if classes differ)
    seed: int = 0
    workers: int = 0
    threads: Optional[int] = None        # torch CPU threads; None = PyTorch's default
    device: str = "auto"
    output: str = "runs"
    name: Optional[str] = None           # run folder name; default <model>-<time>


@dataclass
class EvalConfig:
    weights: str = ""
    model: Optional[str] = None          # read from the weight file's metadata when omitted
    data: str = "digits"
    img_size: Optional[int] = None
    batch_size: int = 128
    workers: int = 0
    device: str = "auto"


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConvformerError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:
        raise ConvformerError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConvformerError(f"config file {path} must hold a mapping of option: value")
    return data


def build_config(cls, config_file: str | None = None, **flags):
    """Defaults, then a preset's values (training), then the config file's, then every flag given."""
    values = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if values.get("preset"):
        from .presets import preset_values
        values = {**preset_values(values["preset"], values.get("model")), **values}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConvformerError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(known)}")
    return cls(**values)


def config_dict(cfg) -> dict:
    return asdict(cfg)


@dataclass
class SRTrainConfig:
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
    ema_decay: Optional[float] = 0.999
    eval_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    threads: Optional[int] = None
    output: str = "runs"
    name: Optional[str] = None
    resume: Optional[str] = None
