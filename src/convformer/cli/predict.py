"""`convformer predict`: top-k labels for image files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import torch
import typer

from convformer.vision.data import eval_transform, open_image
from convformer.errors import ConvformerError
from convformer.registry import create_model
from convformer.cli.app import app
from convformer.optimize import optimize
from convformer.cli.evaluate import model_from_weights, preprocessing


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, from torchvision's weight metadata (offline)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def class_names(meta: dict, num_classes: int) -> list[str]:
    if "classes" in meta:
        return json.loads(meta["classes"])
    if num_classes == 1000:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="Image files."),
    weights: Optional[str] = typer.Option(None, help="Weight file (ours, timm or official layout); without it,\n        the card's published weights are fetched from the hub."),
    model: Optional[str] = typer.Option(None, help="Model name [default: from the weight file]."),
    top: int = typer.Option(5, help="How many labels per image."),
    as_json: bool = typer.Option(False, "--json", help="Print predictions as JSON."),
    fast: bool = typer.Option(False, "--fast", help="Run the folded inference model (convformer.optimize)."),
):
    """Print the top labels with probabilities for each image."""
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
    runner = optimize(net) if fast else net
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
