"""NVIDIA NeMo Conformer checkpoints: key layout, configuration and ``.nemo`` archives.

A ``.nemo`` file is a tar archive holding ``model_config.yaml`` and ``model_weights.ckpt`` (a torch-saved
state dict). We read the YAML with ``yaml.safe_load`` and the weights with ``torch.load(weights_only=True)``,
so an archive cannot run code. NeMo names ``encoder.layers.N.self_attn.linear_q`` what we name
``encoder.layers.N.attn.q``; the map below is the whole difference, plus the CTC head, which NeMo keeps as
a kernel-1 Conv1d (``decoder.decoder_layers.0``) and we as a Linear.
"""
from __future__ import annotations

import io
import os
import re
import tarfile

import torch

from ..errors import ConvformerError

# per-layer names: NeMo suffix -> ours
_LAYER = {
    "norm_feed_forward1": "ffn1_norm", "feed_forward1.linear1": "ffn1.0", "feed_forward1.linear2": "ffn1.3",
    "norm_self_att": "attn_norm", "self_attn.linear_q": "attn.q", "self_attn.linear_k": "attn.k",
    "self_attn.linear_v": "attn.v", "self_attn.linear_out": "attn.out", "self_attn.linear_pos": "attn.pos",
    "self_attn.pos_bias_u": "attn.bias_u", "self_attn.pos_bias_v": "attn.bias_v",
    "norm_conv": "conv_norm", "conv.pointwise_conv1": "conv.pw1", "conv.depthwise_conv": "conv.dw",
    "conv.batch_norm": "conv.norm", "conv.pointwise_conv2": "conv.pw2",
    "norm_feed_forward2": "ffn2_norm", "feed_forward2.linear1": "ffn2.0", "feed_forward2.linear2": "ffn2.3",
    "norm_out": "out_norm",
}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}


def is_nemo_layout(state_dict: dict) -> bool:
    return any(re.match(r"^(encoder\.)?pre_encode\.", k) for k in state_dict)


def _subsampling_index(kind: str, stage: int, part: str) -> int:
    """Position of a stage's convolution inside NeMo's ``pre_encode.conv`` Sequential (ReLUs count)."""
    if kind == "striding":
        return 2 * stage
    if stage == 0:
        return 0
    return 2 + 3 * (stage - 1) + (1 if part == "pw" else 0)


def from_nemo(state_dict: dict, subsampling: str = "dw_striding") -> dict:
    """A NeMo ``ConformerEncoder`` (or whole CTC model) state dict in our ``ConformerCTC`` names."""
    out = {}
    num_layers = 1 + max((int(m.group(1)) for k in state_dict
                          if (m := re.match(r"^(?:encoder\.)?layers\.(\d+)\.", k))), default=-1)
    conv_ids = sorted({int(m.group(1)) for k in state_dict
                       if (m := re.match(r"^(?:encoder\.)?pre_encode\.conv\.(\d+)\.weight$", k))})
    back = {}
    for stage in range(len(conv_ids) if subsampling == "striding" else (len(conv_ids) + 1) // 2):
        parts = ("conv",) if subsampling == "striding" or stage == 0 else ("dw", "pw")
        for part in parts:
            back[_subsampling_index(subsampling, stage, part)] = f"encoder.subsampling.stages.{stage}.{part}"
    for key, value in state_dict.items():
        k = key[len("encoder."):] if key.startswith("encoder.") else key
        if m := re.match(r"^pre_encode\.conv\.(\d+)\.(weight|bias)$", k):
            if int(m.group(1)) not in back:
                raise ConvformerError(f"NeMo key {key} does not fit {subsampling!r} subsampling")
            out[f"{back[int(m.group(1))]}.{m.group(2)}"] = value
        elif m := re.match(r"^pre_encode\.out\.(weight|bias)$", k):
            out[f"encoder.subsampling.proj.{m.group(1)}"] = value
        elif m := re.match(r"^layers\.(\d+)\.(.+)$", k):
            rest = m.group(2)
            module, leaf = (rest, "") if rest in _LAYER else (rest.rsplit(".", 1) + [""])[:2]
            if module not in _LAYER:
                raise ConvformerError(f"NeMo key {key} has no counterpart in our Conformer")
            out[f"encoder.layers.{m.group(1)}.{_LAYER[module]}" + (f".{leaf}" if leaf else "")] = value
        elif k in ("pos_bias_u", "pos_bias_v"):  # untie_biases=False: one pair shared by all layers
            for i in range(num_layers):
                out[f"encoder.layers.{i}.attn.bias_{k[-1]}"] = value.clone()
        elif m := re.match(r"^decoder\.decoder_layers\.0\.(weight|bias)$", key):
            out[f"head.{m.group(1)}"] = value.squeeze(-1) if m.group(1) == "weight" else value
        elif key.startswith(("preprocessor.", "encoder.pos_enc.", "pos_enc.")) or "spec_augment" in key:
            continue  # filterbank and window buffers, positional table: recomputed, not learned
        else:
            raise ConvformerError(f"NeMo key {key} has no counterpart in our Conformer")
    return out


def to_nemo(state_dict: dict, subsampling: str = "dw_striding", with_head: bool = True) -> dict:
    """Our ``ConformerCTC`` state dict in NeMo's names (``encoder.*`` and ``decoder.decoder_layers.0.*``)."""
    out = {}
    for key, value in state_dict.items():
        if m := re.match(r"^encoder\.subsampling\.stages\.(\d+)\.(conv|dw|pw)\.(weight|bias)$", key):
            idx = _subsampling_index(subsampling, int(m.group(1)), m.group(2))
            out[f"encoder.pre_encode.conv.{idx}.{m.group(3)}"] = value
        elif m := re.match(r"^encoder\.subsampling\.proj\.(weight|bias)$", key):
            out[f"encoder.pre_encode.out.{m.group(1)}"] = value
        elif m := re.match(r"^encoder\.layers\.(\d+)\.attn\.bias_([uv])$", key):
            out[f"encoder.layers.{m.group(1)}.self_attn.pos_bias_{m.group(2)}"] = value
        elif m := re.match(r"^encoder\.layers\.(\d+)\.(.+)\.([a-z_]+)$", key):
            out[f"encoder.layers.{m.group(1)}.{_LAYER_BACK[m.group(2)]}.{m.group(3)}"] = value
        elif key.startswith("head.") and with_head:
            out[f"decoder.decoder_layers.0.{key[5:]}"] = value.unsqueeze(-1) if key.endswith("weight") else value
    return out


def config_from_nemo(cfg: dict):
    """Our ``ConformerConfig`` from a NeMo model config (the whole model's, or its ``encoder`` section)."""
    from ..models.conformer import ConformerConfig
    enc = cfg.get("encoder", cfg)
    if enc.get("self_attention_model", "rel_pos") != "rel_pos":
        raise ConvformerError(f"only rel_pos attention is supported, not {enc.get('self_attention_model')!r}")
    kernel = int(enc.get("conv_kernel_size", 31))
    conv_ctx = enc.get("conv_context_size")
    if conv_ctx == "causal" or conv_ctx == [kernel - 1, 0]:
        causal_conv = True
    elif conv_ctx is None or list(conv_ctx) == [(kernel - 1) // 2, (kernel - 1) // 2]:
        causal_conv = False
    else:
        raise ConvformerError(f"conv_context_size {conv_ctx} is not supported (causal or centred only)")
    ctx = enc.get("att_context_size") or [-1, -1]
    contexts = tuple(tuple(int(v) for v in c) for c in (ctx if isinstance(ctx[0], (list, tuple)) else [ctx]))
    vocab = cfg.get("decoder", {}).get("num_classes") or len(cfg.get("decoder", {}).get("vocabulary", []) or []) or 28
    channels = int(enc.get("subsampling_conv_channels", -1))
    return ConformerConfig(
        feat_in=int(enc["feat_in"]), d_model=int(enc["d_model"]), n_layers=int(enc["n_layers"]),
        n_heads=int(enc.get("n_heads", 4)), ff_expansion=int(enc.get("ff_expansion_factor", 4)),
        conv_kernel=kernel, conv_norm=enc.get("conv_norm_type", "batch_norm"), causal_conv=causal_conv,
        subsampling=enc.get("subsampling", "striding"), subsampling_factor=int(enc.get("subsampling_factor", 4)),
        subsampling_channels=0 if channels == -1 else channels,
        causal_subsampling=bool(enc.get("causal_downsampling", False)), att_context=contexts,
        att_context_probs=tuple(enc.get("att_context_probs") or ()),
        att_context_style=enc.get("att_context_style", "regular"), xscaling=bool(enc.get("xscaling", True)),
        dropout=float(enc.get("dropout", 0.1)), dropout_pre_encoder=float(enc.get("dropout_pre_encoder", 0.1)),
        dropout_att=float(enc.get("dropout_att", 0.0)), vocab_size=int(vocab))


def config_to_nemo(cfg) -> dict:
    """NeMo ``ConformerEncoder`` keyword arguments for our ``ConformerConfig`` (the inverse of config_from_nemo)."""
    contexts = [list(c) for c in cfg.att_context]
    return dict(feat_in=cfg.feat_in, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                ff_expansion_factor=cfg.ff_expansion, conv_kernel_size=cfg.conv_kernel, conv_norm_type=cfg.conv_norm,
                conv_context_size="causal" if cfg.causal_conv else None, subsampling=cfg.subsampling,
                subsampling_factor=cfg.subsampling_factor, subsampling_conv_channels=cfg.subsampling_channels or -1,
                causal_downsampling=cfg.causal_subsampling, self_attention_model="rel_pos",
                att_context_size=contexts if len(contexts) > 1 else contexts[0],
                att_context_probs=list(cfg.att_context_probs) or None, att_context_style=cfg.att_context_style,
                xscaling=cfg.xscaling, dropout=cfg.dropout, dropout_pre_encoder=cfg.dropout_pre_encoder,
                dropout_emb=0.0, dropout_att=cfg.dropout_att)


def read_nemo(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict, config dict) from a ``.nemo`` archive, without unpickling anything."""
    import yaml
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConvformerError(f"{path}: no such file")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            if "model_config.yaml" not in members or "model_weights.ckpt" not in members:
                raise ConvformerError(f"{path} is not a .nemo archive: it lacks model_config.yaml or "
                                      "model_weights.ckpt")
            config = yaml.safe_load(tar.extractfile(members["model_config.yaml"]).read())
            blob = tar.extractfile(members["model_weights.ckpt"]).read()
    except tarfile.TarError as err:
        raise ConvformerError(f"{path} is not a readable .nemo (tar) archive: {err}") from None
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or corruption
        raise ConvformerError(f"{path}: model_weights.ckpt is not a plain tensor state dict ({type(err).__name__}); "
                              "re-save it from NeMo as a state dict of tensors") from None
    return state, config


def conformer_from_nemo(path: str | os.PathLike):
    """A ready ``ConformerCTC`` with the configuration and weights of a ``.nemo`` archive."""
    from ..models.conformer import ConformerCTC
    state, config = read_nemo(path)
    cfg = config_from_nemo(config)
    model = ConformerCTC(cfg)
    from . import load_weights
    load_weights(model, state)
    model.nemo_vocabulary = list(config.get("decoder", {}).get("vocabulary", []) or [])
    return model
