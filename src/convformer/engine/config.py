"""Run configuration as dataclasses; defaults < config file (YAML/JSON) < command-line flags."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from convformer.errors import ConvformerError


@dataclass
class EngineOptions:
    """Options of the training engine itself, the same whatever is trained (every *TrainConfig has them)."""
    grad_clip: Optional[float] = None
    precision: str = "fp32"              # "fp32", "bf16" (autocast) or "fp16" (autocast + loss scaling)
    optimizer: str = "adamw"             # "adamw" or "lamb"
    betas: tuple = (0.9, 0.999)          # the optimizer's moment decay rates
    lr_base_batch: Optional[int] = None  # lr is for this global batch; scaled linearly to the real one
    accum_steps: int = 1                 # micro-batches per optimizer step (gradient accumulation)
    ema_decay: Optional[float] = None    # EMA of weights (e.g. 0.9998), evaluated beside the raw weights
    checkpoint_every: int = 0            # also checkpoint every N optimizer steps (0: at epoch ends only)
    resume: Optional[str] = None         # run folder (or its checkpoint.safetensors) to continue
    skip_nonfinite: bool = False         # skip steps whose loss is NaN/Inf instead of stopping
    deterministic: bool = False          # deterministic algorithms (bitwise-reproducible on CPU)
    tensorboard: bool = False            # also write TensorBoard event files to the run folder
    pretrained: Optional[str] = None     # weight file or tag to fine-tune from (new head if classes differ)
    seed: int = 0
    workers: int = 0
    threads: Optional[int] = None        # torch CPU threads; None = PyTorch's default
    device: str = "auto"
    output: str = "runs"
    name: Optional[str] = None           # run folder name; default <model>-<time>


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
    """Defaults, then a preset's values, then the config file's, then every flag given.

    A configuration class with presets (recipes) has a ``preset_values(preset, model) -> dict`` method;
    the engine knows no recipe itself."""
    values = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if values.get("preset"):
        if not hasattr(cls, "preset_values"):
            raise ConvformerError(f"{cls.__name__} has no presets; drop the preset option")
        values = {**cls.preset_values(values["preset"], values.get("model")), **values}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConvformerError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(known)}")
    return cls(**values)


def config_dict(cfg) -> dict:
    return asdict(cfg)


def __getattr__(name):  # the configurations of the systems moved to their packages (deprecated aliases)
    from convformer._aliases import moved_name
    return moved_name(__name__, name)
