"""`convformer eval`: evaluate weights on the digits test split or an image folder's val/."""
from __future__ import annotations

import json
from typing import Optional

import typer
from torch.utils.data import DataLoader

from convformer.vision.data import build_image_data
from convformer.engine import build_config
from convformer.vision.config import EvalConfig
from convformer.vision.evaluate import evaluate
from convformer.engine.distributed import resolve_device
from convformer.errors import ConvformerError
from convformer.optimize import optimize
from convformer.registry import create_model, model_card
from convformer.weights import load_weights, read_state_dict
from convformer.cli.app import app


def model_from_weights(weights: str, model_name: Optional[str] = None, img_size: Optional[int] = None,
                       loaded: Optional[tuple] = None):
    """Create the model a weight file was saved from (its metadata) and load the weights; ``loaded`` is
    the file's (state dict, metadata) where the caller has read it already. Returns (model, metadata)."""
    state, meta = loaded or read_state_dict(weights)
    name = model_name or meta.get("architecture")
    if not name:
        raise ConvformerError(f"{weights} does not say which model it holds; pass --model NAME")
    card = model_card(name)
    if card.task != "classification":
        command = {"pose": "convformer pose eval / pose lift", "super-resolution": "convformer sr eval / sr upscale"}
        raise ConvformerError(f"{weights} holds {name}, a {card.task} model; use {command.get(card.task, 'its own command')}")
    num_classes = int(meta["num_classes"]) if "num_classes" in meta else _classes_in(state)
    size = img_size or int(meta.get("img_size", card.input_size[-1]))
    extra = json.loads(meta.get("model_kwargs", "{}"))  # e.g. the mixers of a `metaformer` run
    model = create_model(name, num_classes=num_classes, img_size=size, **extra)
    load_weights(model, state, metadata=meta, source_name=weights)
    return model.eval(), meta


def preprocessing(net, meta: dict) -> dict:
    """Eval-time preprocessing: mean/std recorded in the weight file win over the model card's."""
    pre = net.model_card.preprocessing
    return {"mean": json.loads(meta["mean"]) if "mean" in meta else pre.get("mean"),
            "std": json.loads(meta["std"]) if "std" in meta else pre.get("std"),
            "crop_pct": pre.get("crop_pct", 1.0), "interpolation": pre.get("interpolation", "bicubic")}


def _classes_in(state: dict) -> int:
    for key in ("head.fc.fc2.bias", "head.fc.bias", "head.fc2.bias", "head.bias"):
        if key in state:
            return int(state[key].shape[0])
    return 1000


@app.command("eval")
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
):
    """Report loss, top-1 and top-5 accuracy."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "as_json", "fast")}
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
    runner = optimize(net.to(device)) if fast else net.to(device)
    result = evaluate(runner, loader, device, progress=True)
    if as_json:
        typer.echo(json.dumps({"model": net.model_card.name, "data": cfg.data, "fast": fast, **result}))
    else:
        typer.echo(f"{net.model_card.name} on {cfg.data}: top-1 {result['top1']:.2f}%  top-5 "
                   f"{result['top5']:.2f}%  loss {result['loss']:.4f}  ({result['count']} images)")
