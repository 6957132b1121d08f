"""`convformer train`: train a model (default: a small ConvFormer on the bundled digits).

Several processes: ``torchrun --nproc_per_node N --no-python convformer train ...`` (or
``torchrun ... -m convformer train ...``); --batch-size is per process.
"""
from __future__ import annotations

import json
from typing import Optional

import typer

from convformer.vision.config import TrainConfig
from convformer.errors import ConvformerError
from convformer.vision.presets import PRESETS
from convformer.cli.app import app
from convformer.engine import options

_PRESET_HELP = "Recipe: " + "; ".join(f"{k} ({v})" for k, v in PRESETS.items()) + "."


@app.command()
@options.trains(TrainConfig)
def train(
    model: Optional[str] = typer.Option(None, help="Registered model name [default: convformer_nano]."),
    data: Optional[str] = typer.Option(None, help="'digits' (built in) or a folder with train/ and val/."),
    preset: Optional[str] = typer.Option(None, help=_PRESET_HELP),
    img_size: Optional[int] = typer.Option(None, help="Input size [default: 32 for digits, else the card's]."),
    epochs: Optional[int] = typer.Option(None, help="Epochs [default: 30]."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process [default: 64]."),
    accum_steps: options.AccumSteps = None,
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: 2e-3]."),
    lr_base_batch: Optional[int] = typer.Option(None, help="--lr is for this global batch; scale linearly."),
    optimizer: Optional[str] = typer.Option(None, help="adamw or lamb [default: adamw]."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (not on norms/biases/scales)."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up epochs [default: 3]."),
    min_lr: options.MinLr = None,
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing [default: 0.1]."),
    mixup: Optional[float] = typer.Option(None, help="Mixup alpha (0 = off) [default: 0]."),
    cutmix: Optional[float] = typer.Option(None, help="CutMix alpha (0 = off) [default: 0]."),
    randaugment: Optional[str] = typer.Option(None, help="timm RandAugment policy, e.g. rand-m9-mstd0.5-inc1."),
    random_erasing: Optional[float] = typer.Option(None, help="Random-erasing probability [default: 0]."),
    drop_path_rate: Optional[float] = typer.Option(None, help="Stochastic depth rate [default: 0.05]."),
    head_dropout: Optional[float] = typer.Option(None, help="Dropout before the classifier [default: 0]."),
    ema_decay: Optional[float] = typer.Option(None, help="Keep an EMA of the weights (e.g. 0.9998)."),
    grad_clip: options.GradClip = None,
    precision: options.Precision = None,
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Channels-last input memory format."),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing",
                                                      help="Recompute activations in backward (less memory)."),
    pretrained: Optional[str] = typer.Option(None, help="Weights to start from (file or card tag); the head is "
                                                        "replaced when the class count differs."),
    num_classes: Optional[int] = typer.Option(None, help="Classes of the new head (checked against the data)."),
    checkpoint_every: options.CheckpointEvery = None,
    resume: options.Resume = None,
    skip_nonfinite: options.SkipNonfinite = None,
    skip_bad_images: Optional[bool] = typer.Option(None, "--skip-bad-images",
                                                   help="Drop unreadable images with a warning."),
    deterministic: options.Deterministic = None,
    tensorboard: options.Tensorboard = None,
    seed: options.Seed = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    device: options.Device = None,
    output: options.Output = None,
    name: options.Name = None,
    model_kwargs: Optional[str] = typer.Option(None, help='More model options as JSON, e.g. '
                                               '\'{"mixers": ["sepconv", "sepconv", "attention", "attention"]}\'.'),
    config: options.Config = None,
    quiet: options.Quiet = False,
):
    """Train a classifier; writes config, metrics, curves and checkpoints to a run folder."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    flags["model_kwargs"] = _json_mapping("--model-kwargs", model_kwargs)
    cfg, result = options.run_training_command(TrainConfig, config, flags, quiet)
    if result.get("val_top1") is None or not result["main"]:
        return
    ema = f", EMA {result['ema_val_top1']:.2f}%" if result.get("ema_val_top1") is not None else ""
    typer.echo(f"{cfg.model} on {cfg.data}: test top-1 {result['val_top1']:.2f}% "
               f"(best {result['best_top1']:.2f}%, top-5 {result['val_top5']:.2f}%{ema}, "
               f"{result['val_count']} images) after {result['epochs']} epochs in {result['seconds']:.0f}s")
    typer.echo(f"run folder: {result['folder']}")


def _json_mapping(flag: str, text: Optional[str]) -> Optional[dict]:
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
