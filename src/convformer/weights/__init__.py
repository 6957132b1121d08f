"""Weights: safetensors I/O, layout conversion (ours, timm, official) and pretrained resolution."""
from __future__ import annotations

import os

from torch import nn

from convformer.errors import ConvformerError
from convformer.weights.convert import adapt_first_conv, drop_classifier, match_shapes, to_official, to_our_names, to_timm
from convformer.weights.hub import resolve_pretrained
from convformer.weights.io import read_state_dict, save_state_dict

__all__ = ["save_weights", "load_weights", "load_pretrained", "to_timm", "to_official", "read_state_dict",
           "save_state_dict"]


def model_metadata(model: nn.Module) -> dict:
    card = getattr(model, "model_card", None)
    meta = {"format": "convformer", "architecture": card.name if card else type(model).__name__}
    if hasattr(model, "num_classes"):
        meta["num_classes"] = str(model.num_classes)
    if hasattr(model, "in_chans"):
        meta["in_chans"] = str(model.in_chans)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "img_size"):
        meta["img_size"] = str(cfg.img_size)
    return meta


def save_weights(model: nn.Module, path: str | os.PathLike, layout: str = "convformer",
                 metadata: dict | None = None):
    """Save weights atomically. ``layout``: "convformer" (ours), "timm" (timm's model loads the file) or
    "official" (the authors' repository loads it; MetaFormer and LowFormer models).

    The file is safetensors unless ``path`` ends in .pth/.pt (a plain tensor dict, see
    ``save_state_dict``), for code that reads only those, such as the official repositories' scripts."""
    if layout not in ("convformer", "timm", "official"):
        raise ConvformerError(f"unknown layout {layout!r}: use 'convformer', 'timm' or 'official'")
    if hasattr(model, "layout_state_dict") and layout != "convformer":  # a model with its own key maps
        state = model.layout_state_dict(layout)
    elif layout == "timm":
        state = to_timm(model)
    elif layout == "official":
        if not hasattr(model, "cfg") or not hasattr(model.cfg, "down_norm"):
            raise ConvformerError("layout='official' is defined for the MetaFormer and LowFormer models only")
        state = to_official(model)
    else:
        state = model.state_dict()
    meta = {**model_metadata(model), "layout": layout, **(metadata or {})}
    return save_state_dict(state, path, meta)


def load_weights(model: nn.Module, source, strict: bool = True, new_classifier_ok: bool = False, *,
                 metadata: dict | None = None, source_name: str | None = None) -> str:
    """Load a weight file or state dict in our, timm's or the official layout into ``model``.

    Returns the detected layout. Any missing, unexpected or mis-shaped key raises ConvformerError
    listing them; ``new_classifier_ok`` (fine-tuning) lets a classifier of another size be skipped and
    adapts the first convolution to a model with another number of input channels (as timm does).
    A caller that has read the file already (``read_state_dict``) passes the state dict with its
    ``metadata`` and ``source_name`` (the file, for messages), so the file is read once.
    """
    where = str(source) if not isinstance(source, dict) else (str(source_name) if source_name else "state dict")
    if isinstance(source, dict):
        state, meta = dict(source), dict(metadata or {})
    else:
        state, meta = read_state_dict(source)
    own = model.state_dict()
    if hasattr(model, "convert_weights"):  # a model with its own layouts and forms (e.g. CFSR)
        state, layout = model.convert_weights(state, own)
    else:
        state, layout = to_our_names(state)
    state, reshaped = match_shapes(state, own)
    if reshaped and layout == "convformer":
        layout = "timm"
    fresh = set()
    if new_classifier_ok:
        state, fresh = drop_classifier(state, own)
        state = adapt_first_conv(state, own, getattr(model, "pretrained_cfg", {}).get("first_conv"))
    _check_keys(state, {k: v for k, v in own.items() if k not in fresh}, where, meta, model, strict)
    model.load_state_dict(state, strict=False)
    return layout


def _check_keys(state: dict, own: dict, where: str, meta: dict, model: nn.Module, strict: bool) -> None:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and state[k].shape != own[k].shape]
    card = getattr(model, "model_card", None)
    arch = meta.get("architecture")
    if arch and card and arch != card.name and not (missing or unexpected or misshaped) and strict:
        raise ConvformerError(f"{where} holds weights for {arch}, not {card.name}; create {arch} instead")
    if not (misshaped or (strict and (missing or unexpected))):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            parts.append(f"{label}: {shown}")
    name = card.name if card else type(model).__name__
    hint = f" (the file says it is {arch})" if arch else ""
    raise ConvformerError(f"{where} does not fit {name}{hint}: " + "; ".join(parts))


def load_pretrained(model: nn.Module, card, pretrained) -> None:
    path, _ = resolve_pretrained(card, pretrained)
    load_weights(model, path, new_classifier_ok=True)
