"""Command-line options every training command shares (image, pose, speech), declared once.

Each alias is an ``Annotated`` type for a typer parameter; ``None`` defaults mean "take the value from
--config or the task's configuration dataclass", which is how ``build_config`` tells given flags apart.
"""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from convformer.errors import ConvformerError

AccumSteps = Annotated[Optional[int], typer.Option(help="Gradient accumulation micro-batches [default: 1].")]
MinLr = Annotated[Optional[float], typer.Option(help="Final learning rate of the cosine [default: 1e-5].")]
GradClip = Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this value.")]
Precision = Annotated[Optional[str], typer.Option(help="fp32, bf16 or fp16 (autocast) [default: fp32].")]
CheckpointEvery = Annotated[Optional[int], typer.Option(help="Also checkpoint every N steps (0: at epoch ends only).")]
Resume = Annotated[Optional[str], typer.Option(help="Continue the run in this folder exactly where it stopped.")]
SkipNonfinite = Annotated[Optional[bool], typer.Option("--skip-nonfinite", help="Skip NaN/Inf-loss steps.")]
Deterministic = Annotated[Optional[bool], typer.Option("--deterministic", help="Deterministic algorithms.")]
Tensorboard = Annotated[Optional[bool], typer.Option("--tensorboard", help="Write TensorBoard event files.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed [default: 0].")]
Workers = Annotated[Optional[int], typer.Option(help="Data-loader worker processes [default: 0].")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for PyTorch.")]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1, ... or auto.")]
Output = Annotated[Optional[str], typer.Option(help="Parent folder of run folders [default: runs].")]
Name = Annotated[Optional[str], typer.Option(help="Run folder name [default: <model>-<time>].")]
Config = Annotated[Optional[str], typer.Option(help="YAML/JSON file of options (flags override it).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or per-epoch lines.")]


def run_training_command(config_cls, config_file: Optional[str], flags: dict, quiet: bool):
    """Resolve a training configuration from --config and the given flags, then run the engine.
    Returns (config, result) as ``engine.train.train`` reports it."""
    from convformer.engine import build_config
    from convformer.engine.train import train
    cfg = build_config(config_cls, config_file, **flags)
    given = {k for k, v in flags.items() if v is not None}
    return cfg, train(cfg, progress=not quiet, given=given)


def uses_config(config_cls):
    """Mark a command with the configuration class it resolves (``build_config``), so that its --help shows
    the configuration's defaults for the options it leaves None (``convformer.cli.show_defaults``)."""
    def mark(fn):
        fn.config_class = config_cls
        return fn
    return mark


def json_mapping(flag: str, text: Optional[str]) -> Optional[dict]:
    """Parse a flag's JSON object (None when the flag is not given)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConvformerError(f"{flag} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ConvformerError(f"{flag} must be a JSON object of option: value, got {text!r}")
    return value
