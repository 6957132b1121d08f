"""NVIDIA NeMo's key layout for the Conformer: NeMo names ``encoder.layers.N.self_attn.linear_q`` what we
name ``encoder.layers.N.attn.q``; this map is the whole difference, plus the heads. NeMo keeps the CTC head
as a kernel-1 Conv1d (``decoder.decoder_layers.0`` in a CTC model, ``ctc_decoder.decoder_layers.0`` in a
hybrid) and we as a Linear; its RNN-T prediction network is ``decoder.prediction.{embed,dec_rnn.lstm}``
(ours ``prediction.{embedding,lstm}``) and its joint's output layer ``joint.joint_net.N``, where N is 1
without joint dropout and 2 with it (ours is always ``joint.net.2``). Pure functions on state dicts, so the
model (:mod:`.conformer`) and the archive reader (:mod:`.nemo`) can both use them."""
from __future__ import annotations

import re

from convformer.errors import ConvformerError

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
        elif m := re.match(r"^(?:ctc_)?decoder\.decoder_layers\.0\.(weight|bias)$", key):
            out[f"head.{m.group(1)}"] = value.squeeze(-1) if m.group(1) == "weight" else value
        elif m := re.match(r"^out_proj\.(weight|bias)$", k):
            out[f"encoder.out_proj.{m.group(1)}"] = value
        elif key == "decoder.prediction.embed.weight":
            out["prediction.embedding.weight"] = value
        elif m := re.match(r"^decoder\.prediction\.dec_rnn\.lstm\.(\w+)$", key):
            out[f"prediction.lstm.{m.group(1)}"] = value
        elif m := re.match(r"^joint\.(pred|enc)\.(weight|bias)$", key):
            out[key] = value
        elif m := re.match(r"^joint\.joint_net\.\d+\.(weight|bias)$", key):
            out[f"joint.net.2.{m.group(1)}"] = value
        elif key.startswith(("preprocessor.", "encoder.pos_enc.", "pos_enc.")) or "spec_augment" in key:
            continue  # filterbank and window buffers, positional table: recomputed, not learned
        else:
            raise ConvformerError(f"NeMo key {key} has no counterpart in our Conformer")
    return out


def to_nemo(state_dict: dict, subsampling: str = "dw_striding", with_head: bool = True,
            joint_dropout: bool = False) -> dict:
    """Our ``ConformerCTC`` / hybrid / transducer state dict in NeMo's names: ``encoder.*``, the CTC head as
    ``decoder.decoder_layers.0.*`` (``ctc_decoder...`` beside a transducer), ``decoder.prediction.*`` and
    ``joint.*``; ``joint_dropout``: the NeMo joint has a dropout layer (its output layer is then index 2)."""
    out = {}
    transducer = any(k.startswith("prediction.") for k in state_dict)
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
        elif key.startswith("encoder.out_proj."):
            out[key] = value
        elif key.startswith("head.") and with_head:
            ctc = "ctc_decoder" if transducer else "decoder"
            out[f"{ctc}.decoder_layers.0.{key[5:]}"] = value.unsqueeze(-1) if key.endswith("weight") else value
        elif key == "prediction.embedding.weight":
            out["decoder.prediction.embed.weight"] = value
        elif key.startswith("prediction.lstm."):
            out[f"decoder.prediction.dec_rnn.lstm.{key[len('prediction.lstm.'):]}"] = value
        elif key.startswith(("joint.pred.", "joint.enc.")):
            out[key] = value
        elif key.startswith("joint.net.2."):
            out[f"joint.joint_net.{2 if joint_dropout else 1}.{key[len('joint.net.2.'):]}"] = value
    return out
