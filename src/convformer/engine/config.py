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
    precision: str = "fp32"              # "fp32" or "bf16" (autocast; weights and optimizer stay fp32)
    channels_last: bool = False          # feed images in channels-last memory format
    grad_checkpointing: bool = False     # recompute block activations in backward to save memory
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
    """Defaults, then the config file's values, then every flag that was given (not None)."""
    values = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConvformerError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(known)}")
    return cls(**values)


def config_dict(cfg) -> dict:
    return asdict(cfg)
