"""`convformer train`: train a model (default: a small ConvFormer on the bundled digits)."""
from __future__ import annotations

from typing import Optional

import typer

from ..engine import TrainConfig, build_config
from ..engine.train import train as run_training
from . import app


@app.command()
def train(
    model: Optional[str] = typer.Option(None, help="Registered model name [default: convformer_nano]."),
    data: Optional[str] = typer.Option(None, help="'digits' (built in) or a folder with train/ and val/."),
    img_size: Optional[int] = typer.Option(None, help="Input size [default: 32 for digits, else the card's]."),
    epochs: Optional[int] = typer.Option(None, help="Epochs [default: 30]."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size [default: 64]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: 2e-3]."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay [default: 0.05]."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up epochs [default: 3]."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing [default: 0.1]."),
    drop_path_rate: Optional[float] = typer.Option(None, help="Stochastic depth rate [default: 0.05]."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (autocast) [default: fp32]."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Channels-last input memory format."),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing",
                                                      help="Recompute activations in backward (less memory)."),
    pretrained: Optional[str] = typer.Option(None, help="Weights to start from (file or card tag)."),
    seed: Optional[int] = typer.Option(None, help="Random seed [default: 0]."),
    workers: Optional[int] = typer.Option(None, help="Data-loader worker processes [default: 0]."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... [default: auto]."),
    output: Optional[str] = typer.Option(None, help="Parent folder of run folders [default: runs]."),
    name: Optional[str] = typer.Option(None, help="Run folder name [default: <model>-<time>]."),
    config: Optional[str] = typer.Option(None, help="YAML/JSON file of options (flags override it)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or per-epoch lines."),
):
    """Train a classifier; writes config, metrics, curves and checkpoints to a run folder."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    cfg = build_config(TrainConfig, config, **flags)
    result = run_training(cfg, progress=not quiet)
    typer.echo(f"{cfg.model} on {cfg.data}: test top-1 {result['val_top1']:.2f}% "
               f"(best {result['best_top1']:.2f}%, top-5 {result['val_top5']:.2f}%, "
               f"{result['val_count']} images) after {result['epochs']} epochs in {result['seconds']:.0f}s")
    typer.echo(f"run folder: {result['folder']}")
