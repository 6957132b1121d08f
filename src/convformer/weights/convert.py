"""Key-layout converters between our MetaFormer layout, timm's and the official repositories'.

Our module names follow timm's, and our pointwise layers are ``nn.Linear`` where timm (in convolutional
stages) uses 1x1 ``nn.Conv2d``: converting is a reshape (out, in) <-> (out, in, 1, 1). The official
sail-sg/metaformer layout differs in names only; the original sail-sg/poolformer layout in names and
1x1-conv shapes. Each mapping is a short explicit list of rules.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

# (pattern, replacement) pairs applied in order, first match wins
OFFICIAL_RULES = [
    (r"^downsample_layers\.0\.conv\.", "stem.conv."),
    (r"^downsample_layers\.0\.post_norm\.", "stem.norm."),
    (r"^downsample_layers\.(\d+)\.pre_norm\.", r"stages.\1.downsample.norm."),
    (r"^downsample_layers\.(\d+)\.conv\.", r"stages.\1.downsample.conv."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^norm\.", "head.norm."),
    (r"^head\.", "head.fc."),
]
# sail-sg/poolformer: network.{0,2,4,6} are the stages, network.{1,3,5} the downsampling convs
POOLFORMER_V1_RULES = [
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"^norm\.", "head.norm."),
    (r"^head\.", "head.fc."),
]


def detect_layout(state_dict: dict) -> str:
    keys = state_dict.keys()
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if any(k.startswith("network.") for k in keys):
        return "poolformer_v1_official"
    return "convformer"  # ours and timm's share names; shapes are reconciled by ``match_shapes``


def apply_rules(rules, key: str) -> str:
    """Rename ``key`` by the first (pattern, replacement) rule that matches; unchanged if none does."""
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return key


def _v1_key(key: str) -> str:
    m = re.match(r"^network\.(\d+)\.proj\.(.*)$", key)
    if m:  # network.1/3/5 downsample into stages 1/2/3
        return f"stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.{m.group(2)}"
    m = re.match(r"^network\.(\d+)\.(\d+)\.layer_scale_(\d)$", key)
    if m:
        return f"stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.layer_scale{m.group(3)}.scale"
    m = re.match(r"^network\.(\d+)\.(\d+)\.(.*)$", key)
    if m:
        return f"stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{m.group(3)}"
    return apply_rules(POOLFORMER_V1_RULES, key)


def to_our_names(state_dict: dict) -> tuple[dict, str]:
    """Rename keys of any known layout to ours; returns (state_dict, detected layout)."""
    layout = detect_layout(state_dict)
    if layout == "official":
        return {apply_rules(OFFICIAL_RULES, k): v for k, v in state_dict.items()}, layout
    if layout == "poolformer_v1_official":
        return {_v1_key(k): v for k, v in state_dict.items()}, layout
    return dict(state_dict), layout


def match_shapes(state_dict: dict, reference: dict) -> tuple[dict, bool]:
    """Reshape tensors that differ from the reference only by trailing singleton dims (1x1 convs vs
    linears). Returns the new dict and whether anything was reshaped (a sign of timm's layout)."""
    out, changed = {}, False
    for key, value in state_dict.items():
        ref = reference.get(key)
        if ref is not None and value.shape != ref.shape and _squeeze_trailing(value.shape) == \
                _squeeze_trailing(ref.shape) and value.numel() == ref.numel():
            value, changed = value.reshape(ref.shape), True
        out[key] = value
    return out, changed


def _squeeze_trailing(shape) -> tuple:
    shape = list(shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def to_timm(model: nn.Module) -> dict:
    """Our MetaFormer's state dict in timm's layout: pointwise weights of the convolutional (non-
    attention) stages become 1x1-conv weights. Frozen buffers timm does not have are dropped."""
    conv_stages = {i for i, kind in enumerate(model.cfg.mixers) if kind != "attention"}
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"^stages\.(\d+)\.blocks\.\d+\.(token_mixer\.pwconv[12]|mlp\.fc[12])\.weight$", key)
        if m and int(m.group(1)) in conv_stages:
            value = value.reshape(*value.shape, 1, 1)
        out[key] = value.clone()
    return out


# Our names -> sail-sg/metaformer's, the inverse of OFFICIAL_RULES (also first match wins).
TO_OFFICIAL_RULES = [
    (r"^stem\.conv\.", "downsample_layers.0.conv."),
    (r"^stem\.norm\.", "downsample_layers.0.post_norm."),
    (r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm."),
    (r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]


def _to_v1_key(key: str) -> str:
    """Our name -> sail-sg/poolformer's (the inverse of ``_v1_key``)."""
    m = re.match(r"^stages\.(\d+)\.downsample\.conv\.(.*)$", key)
    if m:
        return f"network.{2 * int(m.group(1)) - 1}.proj.{m.group(2)}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.layer_scale(\d)\.scale$", key)
    if m:
        return f"network.{2 * int(m.group(1))}.{m.group(2)}.layer_scale_{m.group(3)}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        return f"network.{2 * int(m.group(1))}.{m.group(2)}.{m.group(3)}"
    return apply_rules([(r"^stem\.conv\.", "patch_embed.proj."), (r"^head\.norm\.", "norm."),
                        (r"^head\.fc\.", "head.")], key)


def to_official(model: nn.Module) -> dict:
    """Our MetaFormer's state dict in the authors' layout, loadable by their code: sail-sg/metaformer
    for the baselines (pointwise layers are nn.Linear there too, so only names change) and
    sail-sg/poolformer for the original PoolFormer (recognised by its norm-free downsampling), whose MLP
    layers are 1x1 convolutions."""
    state = model.state_dict()
    if not model.cfg.down_norm:
        return {_to_v1_key(k): (v.reshape(*v.shape, 1, 1) if re.search(r"\.mlp\.fc[12]\.weight$", k) else v).clone()
                for k, v in state.items()}
    return {apply_rules(TO_OFFICIAL_RULES, k): v.clone() for k, v in state.items()}


def drop_classifier(state_dict: dict, model_state: dict) -> tuple[dict, set]:
    """Remove final-classifier tensors whose shape does not fit the model (fine-tuning to new classes).
    Returns the remaining state and the model keys left at their fresh initialisation."""
    out, dropped = {}, set()
    for key, value in state_dict.items():
        is_classifier = re.match(r"^head\.fc\.(fc2\.)?(weight|bias)$", key)
        if is_classifier and (key not in model_state or model_state[key].shape != value.shape):
            dropped.add(key)
            continue
        out[key] = value
    return out, dropped


def adapt_first_conv(state_dict: dict, model_state: dict, first_conv: str | None) -> dict:
    """Fit pretrained RGB stem weights to a model with another number of input channels.

    One channel (greyscale): the RGB filters summed, so a grey image gives what the RGB model gives
    for that image replicated to three channels. More channels: the RGB filters repeated cyclically and
    scaled by 3/in_chans, which keeps the activations' scale. The same rule timm applies."""
    key = f"{first_conv}.weight" if first_conv else None
    if key not in state_dict or key not in model_state:
        return state_dict
    weight, want = state_dict[key], model_state[key].shape[1]
    have = weight.shape[1]
    if have == want or weight.ndim != 4 or have != 3:
        return state_dict
    if want == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        adapted = weight.repeat(1, math.ceil(want / 3), 1, 1)[:, :want] * (3 / want)
    return {**state_dict, key: adapted}


def numel(state_dict: dict) -> int:
    return sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor))
