"""NVIDIA NeMo Conformer checkpoints: configuration and ``.nemo`` archives (the key map is :mod:`.nemo_keys`).

A ``.nemo`` file is a tar archive holding ``model_config.yaml`` and ``model_weights.ckpt`` (a torch-saved
state dict). We read the YAML with ``yaml.safe_load`` and the weights with ``torch.load(weights_only=True)``,
so an archive cannot run code.
"""
from __future__ import annotations

import io
import os
import tarfile

import torch

from convformer.asr.conformer import ConformerConfig, ConformerCTC
from convformer.asr.nemo_keys import from_nemo, is_nemo_layout, to_nemo
from convformer.errors import ConvformerError
from convformer.weights import load_weights


def config_from_nemo(cfg: dict):
    """Our ``ConformerConfig`` from a NeMo model config (the whole model's, or its ``encoder`` section)."""
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
    state, config = read_nemo(path)
    cfg = config_from_nemo(config)
    model = ConformerCTC(cfg)
    load_weights(model, state)
    model.nemo_vocabulary = list(config.get("decoder", {}).get("vocabulary", []) or [])
    return model


__all__ = ["config_from_nemo", "config_to_nemo", "conformer_from_nemo", "from_nemo", "is_nemo_layout", "read_nemo",
           "to_nemo"]
