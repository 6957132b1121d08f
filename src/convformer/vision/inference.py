"""Image classifiers from weight files: the model a file was saved from, its preprocessing and its class
names. Used by `convformer eval`, `predict` and `export`, and by benchmarks."""
from __future__ import annotations

import json
from typing import Optional

from convformer.errors import ConvformerError
from convformer.registry import create_model, model_card
from convformer.weights import load_weights, read_state_dict


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
