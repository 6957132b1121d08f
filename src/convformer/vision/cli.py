"""The image-classification commands, mounted at the top level of the `convformer` app: `train` (default:
a small ConvFormer on the bundled digits), `eval` (weights on the digits test split or a folder's val/) and
`predict` (top-k labels for image files).

Several processes: ``torchrun --nproc_per_node N --no-python convformer train ...`` (or
``torchrun ... -m convformer train ...``); --batch-size is per process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import torch
import typer
from torch.utils.data import DataLoader

from convformer.engine import build_config, options
from convformer.engine.distributed import resolve_device
from convformer.errors import ConvformerError
from convformer.optimize import RUNTIME_HELP, check_runtime, for_inference
from convformer.registry import create_model
from convformer.vision.config import EvalConfig, TrainConfig
from convformer.vision.data import build_image_data, eval_transform, open_image
from convformer.vision.evaluate import evaluate
from convformer.vision.inference import class_names, model_from_weights, preprocessing
from convformer.vision.presets import PRESETS

app = typer.Typer()

_PRESET_HELP = "Recipe: " + "; ".join(f"{k} ({v})" for k, v in PRESETS.items()) + "."


@app.command()
@options.uses_config(TrainConfig)
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
    flags["model_kwargs"] = options.json_mapping("--model-kwargs", model_kwargs)
    cfg, result = options.run_training_command(TrainConfig, config, flags, quiet)
    if result.get("val_top1") is None or not result["main"]:
        return
    ema = f", EMA {result['ema_val_top1']:.2f}%" if result.get("ema_val_top1") is not None else ""
    typer.echo(f"{cfg.model} on {cfg.data}: test top-1 {result['val_top1']:.2f}% "
               f"(best {result['best_top1']:.2f}%, top-5 {result['val_top5']:.2f}%{ema}, "
               f"{result['val_count']} images) after {result['epochs']} epochs in {result['seconds']:.0f}s")
    typer.echo(f"run folder: {result['folder']}")


@app.command("eval")
@options.uses_config(EvalConfig)
def evaluate_cmd(
    weights: str = typer.Argument(..., help="Weight file (.safetensors from `convformer train`, or timm/official)."),
    model: Optional[str] = typer.Option(None, help="Model name, if the file does not record it."),
    data: Optional[str] = typer.Option(None, help="'digits' or a folder with val/ [default: digits]."),
    img_size: Optional[int] = typer.Option(None, help="Input size [default: from the weights or card]."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size [default: 128]."),
    workers: Optional[int] = typer.Option(None, help="Data-loader workers [default: 0]."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... [default: auto]."),
    config: Optional[str] = typer.Option(None, help="YAML/JSON file of options."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    fast: bool = typer.Option(False, "--fast", help="Run the folded inference model (convformer.optimize)."),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP),
):
    """Report loss, top-1 and top-5 accuracy."""
    check_runtime(runtime)
    flags = {k: v for k, v in locals().items() if k not in ("config", "as_json", "fast", "runtime")}
    cfg = build_config(EvalConfig, config, **flags)
    net, meta = model_from_weights(cfg.weights, cfg.model, cfg.img_size)
    size = net.cfg.img_size
    pre = preprocessing(net, meta)
    data_set = build_image_data(cfg.data, size, pre["mean"], pre["std"], pre["crop_pct"], pre["interpolation"],
                                need_train=False)
    if net.num_classes != len(data_set.classes):
        raise ConvformerError(f"the weights predict {net.num_classes} classes but {cfg.data} has "
                              f"{len(data_set.classes)}; evaluate on the data the model was trained for")
    device = resolve_device(cfg.device)
    loader = DataLoader(data_set.val, batch_size=cfg.batch_size, num_workers=cfg.workers)
    runner = for_inference(net.to(device), fast, runtime)
    result = evaluate(runner, loader, device, progress=True)
    if as_json:
        typer.echo(json.dumps({"model": net.model_card.name, "data": cfg.data, "fast": fast or runtime != "torch",
                               "runtime": runtime, **result}))
    else:
        typer.echo(f"{net.model_card.name} on {cfg.data}: top-1 {result['top1']:.2f}%  top-5 "
                   f"{result['top5']:.2f}%  loss {result['loss']:.4f}  ({result['count']} images)")


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="Image files."),
    weights: Optional[str] = typer.Option(None, help="Weight file (ours, timm or official layout); without it,\n        the card's published weights are fetched from the hub."),
    model: Optional[str] = typer.Option(None, help="Model name [default: from the weight file]."),
    top: int = typer.Option(5, help="How many labels per image."),
    as_json: bool = typer.Option(False, "--json", help="Print predictions as JSON."),
    fast: bool = typer.Option(False, "--fast", help="Run the folded inference model (convformer.optimize)."),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP),
):
    """Print the top labels with probabilities for each image."""
    check_runtime(runtime)
    if weights:
        net, meta = model_from_weights(weights, model)
    elif model:  # the card's published weights, through the hub
        net, meta = create_model(model, pretrained=True).eval(), {}
    else:
        raise ConvformerError("pass --weights FILE (and --model NAME if the file does not record it)")
    pre = preprocessing(net, meta)
    transform = eval_transform(net.cfg.img_size, pre["mean"], pre["std"], pre["crop_pct"], pre["interpolation"])
    names = class_names(meta, net.num_classes)
    batch = torch.stack([transform(open_image(p)) for p in images])  # every file read before any output
    runner = for_inference(net, fast, runtime)
    with torch.inference_mode():
        probs = runner(batch).softmax(dim=1)
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    results = []
    for path, vals, idxs in zip(images, values, indices):
        preds = [{"label": names[int(i)], "index": int(i), "prob": round(float(v), 5)} for v, i in zip(vals, idxs)]
        results.append({"image": str(path), "top": preds})
    if as_json:
        typer.echo(json.dumps(results, indent=1))
        return
    for res in results:
        typer.echo(res["image"])
        for p in res["top"]:
            typer.echo(f"  {p['prob'] * 100:6.2f}%  {p['label']}")
