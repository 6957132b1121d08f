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


# NeMo encoder options we do not build, with the values we can take (NeMo's defaults)
_REFUSED = {"reduction": (None,), "reduction_position": (None,), "global_tokens": (0,),
            "global_attn_separate": (False,), "self_attention_model": ("rel_pos",)}


def config_from_nemo(cfg: dict):
    """Our ``ConformerConfig`` from a NeMo model config (the whole model's, or its ``encoder`` section)."""
    enc = cfg.get("encoder", cfg)
    for option, allowed in _REFUSED.items():
        if allowed is not None and option in enc and enc[option] not in allowed:
            raise ConvformerError(f"NeMo encoder option {option}={enc[option]!r} is not supported (only "
                                  f"{' or '.join(repr(a) for a in allowed)})")
    if enc.get("conv_norm_type", "batch_norm") == "fused_batch_norm":
        raise ConvformerError("NeMo encoder option conv_norm_type='fused_batch_norm' is not supported; fuse it back "
                              "into batch_norm in NeMo before converting")
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
    vocab = len(nemo_labels(cfg)) or cfg.get("decoder", {}).get("num_classes") or \
        cfg.get("decoder", {}).get("vocab_size") or 28
    channels = int(enc.get("subsampling_conv_channels", -1))
    return ConformerConfig(
        feat_in=int(enc["feat_in"]), d_model=int(enc["d_model"]), n_layers=int(enc["n_layers"]),
        n_heads=int(enc.get("n_heads", 4)), ff_expansion=int(enc.get("ff_expansion_factor", 4)),
        conv_kernel=kernel, conv_norm=enc.get("conv_norm_type", "batch_norm"), causal_conv=causal_conv,
        bias=bool(enc.get("use_bias", True)), feat_out=max(int(enc.get("feat_out", -1)), 0),
        subsampling=enc.get("subsampling", "striding"), subsampling_factor=int(enc.get("subsampling_factor", 4)),
        subsampling_channels=0 if channels == -1 else channels,
        causal_subsampling=bool(enc.get("causal_downsampling", False)), att_context=contexts,
        att_context_probs=tuple(enc.get("att_context_probs") or ()),
        att_context_style=enc.get("att_context_style", "regular"), xscaling=bool(enc.get("xscaling", True)),
        dropout=float(enc.get("dropout", 0.1)), dropout_pre_encoder=float(enc.get("dropout_pre_encoder", 0.1)),
        dropout_att=float(enc.get("dropout_att", 0.0)), vocab_size=int(vocab)).validate()


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
                dropout_emb=0.0, dropout_att=cfg.dropout_att, use_bias=cfg.bias, feat_out=cfg.feat_out or -1)


def nemo_labels(cfg: dict) -> list:
    """The vocabulary a NeMo model config lists (CTC decoder, hybrid's auxiliary CTC decoder, or joint)."""
    for section in (cfg.get("labels"), cfg.get("decoder", {}).get("vocabulary"),
                    cfg.get("aux_ctc", {}).get("decoder", {}).get("vocabulary"), cfg.get("joint", {}).get("vocabulary")):
        if section:
            return list(section)
    return []


def heads_from_nemo(cfg: dict) -> tuple[str, dict]:
    """("ctc" | "hybrid" | "transducer", our head options) from a NeMo model config."""
    if "joint" not in cfg:
        return "ctc", {}
    prednet = cfg.get("decoder", {}).get("prednet", {})
    jointnet = cfg["joint"].get("jointnet", {})
    defaults = cfg.get("model_defaults", {})
    heads = dict(pred_hidden=int(prednet.get("pred_hidden", defaults.get("pred_hidden", 640))),
                 pred_layers=int(prednet.get("pred_rnn_layers", 1)),
                 joint_hidden=int(jointnet.get("joint_hidden", defaults.get("joint_hidden", 640))),
                 joint_activation=str(jointnet.get("activation", "relu")))
    for option in ("rnn_hidden_size",):
        if prednet.get(option, -1) not in (-1, None, heads["pred_hidden"]):
            raise ConvformerError(f"NeMo prediction network option {option}={prednet[option]} is not supported")
    return ("hybrid" if "aux_ctc" in cfg else "transducer"), heads


def heads_to_nemo(model, labels: list) -> dict:
    """The NeMo model-config sections of our hybrid's or transducer's heads (``decoder``, ``joint``,
    ``aux_ctc``, ``model_defaults``) for a character vocabulary ``labels``."""
    pred, joint = model.prediction, model.joint
    hidden, joint_hidden = pred.lstm.hidden_size, joint.enc.out_features
    activation = type(joint.net[0]).__name__.lower()
    sections = {
        "model_defaults": {"enc_hidden": model.cfg.out_dim, "pred_hidden": hidden, "joint_hidden": joint_hidden},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "vocab_size": len(labels),
                    "blank_as_pad": True, "prednet": {"pred_hidden": hidden, "pred_rnn_layers": pred.lstm.num_layers,
                                                      "dropout": 0.0}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "num_classes": len(labels),
                  "vocabulary": list(labels), "log_softmax": None, "preserve_memory": False, "fuse_loss_wer": False,
                  "jointnet": {"joint_hidden": joint_hidden, "activation": activation, "dropout": 0.0,
                               "encoder_hidden": model.cfg.out_dim, "pred_hidden": hidden}},
    }
    if model.head is not None:
        sections["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": model.cfg.out_dim,
            "num_classes": len(labels), "vocabulary": list(labels)}}
    return sections


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


def model_from_nemo(state: dict, config: dict):
    """Our model for a NeMo model config and state dict: ``ConformerCTC`` (EncDecCTCModel), ``ConformerHybrid``
    (EncDecHybridRNNTCTCModel) or ``ConformerTransducer`` (EncDecRNNTModel), with the weights loaded."""
    from convformer.asr.hybrid import ConformerHybrid, ConformerTransducer
    cfg = config_from_nemo(config)
    kind, heads = heads_from_nemo(config)
    model = {"ctc": lambda: ConformerCTC(cfg), "hybrid": lambda: ConformerHybrid(cfg, **heads),
             "transducer": lambda: ConformerTransducer(cfg, **heads)}[kind]()
    load_weights(model, state)
    model.nemo_vocabulary = nemo_labels(config)
    return model


def conformer_from_nemo(path: str | os.PathLike):
    """A ready CTC, hybrid or transducer Conformer with the configuration and weights of a ``.nemo`` archive."""
    state, config = read_nemo(path)
    return model_from_nemo(state, config)


def nemo_config(model, labels: list) -> dict:
    """A NeMo model config for our model (CTC, hybrid or transducer) with the character vocabulary ``labels``:
    ``EncDecCTCModel``, ``EncDecHybridRNNTCTCModel`` or ``EncDecRNNTModel``, NeMo's default front end."""
    if len(labels) != model.cfg.vocab_size:
        raise ConvformerError(f"the vocabulary has {len(labels)} symbols; the model {model.cfg.vocab_size}")
    kind = "ctc" if not hasattr(model, "joint") else ("hybrid" if model.head is not None else "transducer")
    target = {"ctc": "EncDecCTCModel", "hybrid": "EncDecHybridRNNTCTCModel", "transducer": "EncDecRNNTModel"}[kind]
    config = {"target": f"nemo.collections.asr.models.{target}", "sample_rate": model.cfg.sample_rate,
              "labels": list(labels),
              "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                               "sample_rate": model.cfg.sample_rate, "features": model.cfg.feat_in,
                               "window_size": 0.025, "window_stride": model.cfg.hop_ms / 1000, "n_fft": 512,
                               "normalize": "per_feature", "dither": 1e-5},
              "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", **config_to_nemo(model.cfg)}}
    if kind == "ctc":
        config["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": model.cfg.out_dim,
                             "num_classes": len(labels), "vocabulary": list(labels)}
    else:
        config.update(heads_to_nemo(model, labels))
        config["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}
        config["loss"] = {"loss_name": "default"}
    return config


def write_nemo(model, labels: list, path: str | os.PathLike) -> str:
    """Write our model as a ``.nemo`` archive NeMo restores (``ASRModel.restore_from``): its config and its
    weights in NeMo's names. Written to a temporary file and renamed, so ``path`` is whole or untouched."""
    import yaml
    from convformer.fileio import atomic_write
    config = nemo_config(model, labels)
    state = to_nemo(model.state_dict(), model.cfg.subsampling)
    # NeMo's front end keeps its window and filterbank in the state dict; ours are the same tensors
    from convformer.asr.data import FrontendConfig, LogMelFrontend
    frontend = LogMelFrontend(FrontendConfig(sample_rate=model.cfg.sample_rate, n_mels=model.cfg.feat_in,
                                             hop_ms=model.cfg.hop_ms))
    state["preprocessor.featurizer.window"] = frontend.window.clone()
    state["preprocessor.featurizer.fb"] = frontend.fb[None].clone()
    blobs = {"model_config.yaml": yaml.safe_dump(config, sort_keys=False).encode()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blobs["model_weights.ckpt"] = buffer.getvalue()

    def write(tmp):
        with tarfile.open(tmp, "w") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"./{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return str(atomic_write(path, write))


__all__ = ["config_from_nemo", "config_to_nemo", "conformer_from_nemo", "from_nemo", "heads_from_nemo",
           "heads_to_nemo", "is_nemo_layout", "model_from_nemo", "nemo_config", "nemo_labels", "read_nemo",
           "to_nemo", "write_nemo"]
