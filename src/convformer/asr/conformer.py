"""Conformer speech encoder with limited attention context, and its CTC model.

Gulati et al., "Conformer" (2020), in the cache-aware form of Noroozi et al., "Stateful Conformer with
Cache-based Inference for Streaming ASR" (NVIDIA NeMo's ``ConformerEncoder``; facts in REFERENCE.md
section 4). Every layer is a MetaFormer-style block with two mixers, relative-position attention over a
limited [left, right] context and a causal depthwise convolution, between two half-step FFNs. The same
context masks are used in training and offline inference, so the model's look-ahead does not grow with
depth in ``chunked_limited`` style; :mod:`convformer.asr.streaming` runs it chunk by chunk with
caches and gives the same outputs.

Tensors: features (B, T, n_mels) in, encodings (B, T / factor, d_model) out, with per-utterance lengths.
Frames beyond an utterance's length are zeroed between the subsampling convolutions, so an utterance
gives the same output alone or padded in a batch.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch
from torch import nn
import torch.nn.functional as F

from convformer.errors import ConvformerError
from convformer.mixers.rel_attention import RelPositionAttention, relative_layout

STYLES = ("regular", "chunked_limited")


@dataclass(frozen=True)
class ConformerConfig:
    feat_in: int = 80                       # mel bins
    d_model: int = 176
    n_layers: int = 16
    n_heads: int = 4
    ff_expansion: int = 4
    conv_kernel: int = 9
    conv_norm: str = "batch_norm"           # or "layer_norm"; "instance_norm", "group_normN" (offline only)
    bias: bool = True                       # biases in the layers' linear and conv layers (NeMo's use_bias)
    feat_out: int = 0                       # > 0 (and != d_model): a final linear projection to this width
    causal_conv: bool = True                # depthwise conv sees (kernel-1) past frames, none ahead
    subsampling: str = "dw_striding"        # or "striding"
    subsampling_factor: int = 4             # 4 or 8 (or any power of 2)
    subsampling_channels: int = 0           # 0: d_model
    causal_subsampling: bool = True
    att_context: tuple = ((-1, -1),)        # (left, right) pairs; the first is the inference default
    att_context_probs: tuple = ()           # sampling weights of the contexts in training (uniform if empty)
    att_context_style: str = "regular"      # or "chunked_limited"
    xscaling: bool = True                   # multiply the subsampled input by sqrt(d_model)
    dropout: float = 0.1
    dropout_pre_encoder: float = 0.1
    dropout_att: float = 0.1
    vocab_size: int = 28                    # CTC symbols without the blank (which is the last class)
    sample_rate: int = 16000
    hop_ms: float = 10.0                    # feature frame step

    def validate(self) -> "ConformerConfig":
        if self.att_context_style not in STYLES:
            raise ConvformerError(f"att_context_style must be one of {STYLES}, not {self.att_context_style!r}")
        if self.subsampling not in ("dw_striding", "striding"):
            raise ConvformerError(f"subsampling must be 'dw_striding' or 'striding', not {self.subsampling!r}")
        f = self.subsampling_factor
        if f < 2 or f & (f - 1):
            raise ConvformerError(f"subsampling_factor must be a power of 2, not {f}")
        norm_check(self.conv_norm, self.d_model)
        if self.d_model % self.n_heads:
            raise ConvformerError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for ctx in self.att_context:
            if len(ctx) != 2 or ctx[0] < -1 or ctx[1] < -1:
                raise ConvformerError(f"attention contexts are (left, right) pairs with -1 for unlimited: {ctx}")
        if self.att_context_probs and len(self.att_context_probs) != len(self.att_context):
            raise ConvformerError("att_context_probs needs one weight per attention context")
        return self

    @property
    def out_dim(self) -> int:
        """Width of the encoder's output (what the heads see)."""
        return self.feat_out if self.feat_out > 0 else self.d_model

    @property
    def frame_ms(self) -> float:
        return self.hop_ms * self.subsampling_factor


# ---- subsampling -----------------------------------------------------------------------------------------
def subsampled_length(lengths: torch.Tensor, causal: bool) -> torch.Tensor:
    """Frames out of one stride-2, kernel-3 stage for ``lengths`` frames in (an empty input stays empty)."""
    out = lengths // 2 + 1 if causal else (lengths - 1).div(2, rounding_mode="floor") + 1
    return torch.where(lengths > 0, out, torch.zeros_like(out))


class ConvSubsampling(nn.Module):
    """Stride-2 3x3 convolutions over (time, mel) until the frame rate is 1/factor; then a linear layer.

    ``striding``: full convolutions, each followed by ReLU. ``dw_striding``: one full convolution, then
    depthwise stride-2 + pointwise convolutions (far fewer MACs). Causal padding puts kernel-1 zeros
    before and stride-1 after each axis, so output frame t depends on input frames up to factor * t."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        channels = cfg.subsampling_channels or cfg.d_model
        self.causal = cfg.causal_subsampling
        self.pad = (2, 1) if self.causal else (1, 1)
        self.num_stages = int(math.log2(cfg.subsampling_factor))
        self.stages = nn.ModuleList()
        freq = cfg.feat_in
        for i in range(self.num_stages):
            stage = nn.Module()
            if cfg.subsampling == "striding" or i == 0:
                stage.conv = nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2)
            else:
                stage.dw = nn.Conv2d(channels, channels, 3, stride=2, groups=channels)
                stage.pw = nn.Conv2d(channels, channels, 1)
            self.stages.append(stage)
            freq = (freq + sum(self.pad) - 3) // 2 + 1
        self.proj = nn.Linear(channels * freq, cfg.d_model)

    def stage_starts(self, start: torch.Tensor) -> list[torch.Tensor]:
        """Absolute index of the first output of each stage when the input starts at ``start``."""
        return [torch.div(start, 2 ** (s + 1), rounding_mode="floor") for s in range(self.num_stages)]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor | None = None):
        """x (B, T, F), lengths (B,): valid input frames counted from absolute index 0. ``start`` (B,):
        absolute index of x's first frame (streaming; default 0). Returns (B, T', D) and output lengths."""
        b, t, _ = x.shape
        start = torch.zeros_like(lengths) if start is None else start
        x = _zero_outside(x, start, lengths, dim=1).unsqueeze(1)
        for stage, first in zip(self.stages, self.stage_starts(start)):
            x = F.pad(x, (*self.pad, *self.pad))
            x = stage.conv(x) if hasattr(stage, "conv") else stage.pw(stage.dw(x))
            lengths = subsampled_length(lengths, self.causal)
            x = _zero_outside(torch.relu(x), first, lengths, dim=2)
        b, c, t, f = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, t, c * f)), lengths

    def output_length(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for ``lengths`` input frames."""
        for _ in range(self.num_stages):
            lengths = subsampled_length(lengths, self.causal)
        return lengths


def _zero_outside(x: torch.Tensor, first: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero the frames of ``x`` (time along ``dim``) whose absolute index first + i is < 0 or >= length."""
    idx = torch.arange(x.shape[dim], device=x.device).unsqueeze(0) + first.unsqueeze(1)
    keep = (idx >= 0) & (idx < lengths.unsqueeze(1))
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    return x * keep.view(shape).to(x.dtype)


# ---- the layer -------------------------------------------------------------------------------------------
class FeedForward(nn.Sequential):
    def __init__(self, dim: int, expansion: int, dropout: float, bias: bool = True):
        super().__init__(nn.Linear(dim, dim * expansion, bias=bias), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(dim * expansion, dim, bias=bias))


UTTERANCE_NORMS = ("instance_norm", "group_norm")


def norm_check(norm: str, dim: int) -> None:
    """Refuse a conv_norm we cannot build, naming the ones we can."""
    if norm in ("batch_norm", "layer_norm", "instance_norm"):
        return
    if norm.startswith("group_norm") and norm[len("group_norm"):].isdigit():
        groups = int(norm[len("group_norm"):])
        if groups > 0 and dim % groups == 0:
            return
    raise ConvformerError(f"conv_norm {norm!r} is not supported: use batch_norm, layer_norm, instance_norm or "
                          f"group_normN (N groups dividing d_model={dim})")


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (causal or centred), norm, Swish, pointwise conv; (B,T,C)."""

    def __init__(self, dim: int, kernel: int, norm: str = "batch_norm", causal: bool = True, bias: bool = True):
        super().__init__()
        self.context = (kernel - 1, 0) if causal else ((kernel - 1) // 2, (kernel - 1) // 2)
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1, bias=bias)
        self.dw = nn.Conv1d(dim, dim, kernel, groups=dim, bias=bias)
        norm_check(norm, dim)
        if norm == "batch_norm":
            self.norm = nn.BatchNorm1d(dim)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(dim)
        elif norm == "instance_norm":  # statistics over the whole (padded) utterance, no parameters, as NeMo's
            self.norm = nn.InstanceNorm1d(dim)
        else:                          # group_normN: statistics over N channel groups and the whole utterance
            self.norm = nn.GroupNorm(int(norm[len("group_norm"):]), dim)
        self.pw2 = nn.Conv1d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor, invalid: torch.Tensor | None = None, cache: torch.Tensor | None = None):
        """``invalid`` (B, T) marks frames to zero before the depthwise conv; ``cache`` (B, C, kernel-1)
        holds the previous inputs of a causal depthwise conv. Returns (y, next cache or None)."""
        x = F.glu(self.pw1(x.transpose(1, 2)), dim=1)
        if invalid is not None:
            x = x.masked_fill(invalid.unsqueeze(1), 0.0)
        if cache is None:
            x, next_cache = F.pad(x, self.context), None
        else:
            x = torch.cat([cache, x], dim=2)
            next_cache = x[:, :, x.shape[2] - cache.shape[2]:]
        x = self.dw(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2) if isinstance(self.norm, nn.LayerNorm) else self.norm(x)
        return self.pw2(F.silu(x)).transpose(1, 2), next_cache


class ConformerLayer(nn.Module):
    """Half FFN, relative-position attention, convolution module, half FFN, LayerNorm; all pre-norm
    residual branches."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d = cfg.d_model
        self.ffn1_norm, self.ffn1 = nn.LayerNorm(d), FeedForward(d, cfg.ff_expansion, cfg.dropout, cfg.bias)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RelPositionAttention(d, cfg.n_heads, attn_drop=cfg.dropout_att, bias=cfg.bias)
        self.conv_norm = nn.LayerNorm(d)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.conv_norm, cfg.causal_conv, cfg.bias)
        self.ffn2_norm, self.ffn2 = nn.LayerNorm(d), FeedForward(d, cfg.ff_expansion, cfg.dropout, cfg.bias)
        self.out_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def half_ffn1(self, x):
        return x + 0.5 * self.drop(self.ffn1(self.ffn1_norm(x)))

    def attend(self, x, queries: slice, pos_table, pos_index, blocked):
        """x: the residual stream of every key frame; ``queries``: the frames of x that ask (all of them
        offline, the new chunk when streaming). Returns the queries' residual stream after attention."""
        h = self.attn_norm(x)
        return x[:, queries] + self.drop(self.attn(h[:, queries], h, pos_table, pos_index, blocked))

    def convolve(self, x, invalid, cache=None):
        y, cache = self.conv(self.conv_norm(x), invalid, cache)
        return x + self.drop(y), cache

    def finish(self, x):
        return self.out_norm(x + 0.5 * self.drop(self.ffn2(self.ffn2_norm(x))))

    def forward(self, x, pos_table, pos_index, blocked, invalid):
        """The offline layer: every frame of x is a query and a key."""
        x = self.half_ffn1(x)
        x = self.attend(x, slice(None), pos_table, pos_index, blocked)
        x, _ = self.convolve(x, invalid)
        return self.finish(x)


def context_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, context: tuple, style: str) -> torch.Tensor:
    """(Tq, Tk) bool: may the query at absolute frame q_pos[i] attend to the key at k_pos[j]?

    ``regular``: keys within [q - left, q + right]. ``chunked_limited``: frames form chunks of right+1;
    a query sees its whole chunk and the left // (right+1) chunks before it. -1 means unlimited."""
    left, right = context
    d = q_pos.unsqueeze(1) - k_pos.unsqueeze(0)          # how far the key lies in the past
    ok = torch.ones_like(d, dtype=torch.bool)
    if style == "chunked_limited" and right >= 0:
        chunk = right + 1
        dc = torch.div(q_pos, chunk, rounding_mode="floor").unsqueeze(1) - \
            torch.div(k_pos, chunk, rounding_mode="floor").unsqueeze(0)
        left_chunks = left // chunk if left >= 0 else 10 ** 9
        return (dc >= 0) & (dc <= left_chunks)
    if left >= 0:
        ok = ok & (d <= left)
    if right >= 0:
        ok = ok & (d >= -right)
    return ok


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.subsampling = ConvSubsampling(cfg)
        self.xscale = math.sqrt(cfg.d_model) if cfg.xscaling else 1.0
        self.pre_drop = nn.Dropout(cfg.dropout_pre_encoder)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.n_layers))
        self.out_proj = nn.Linear(cfg.d_model, cfg.feat_out) if cfg.out_dim != cfg.d_model else None
        self.context_index = 0

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output to the encoder's output width (``feat_out``; identity without one)."""
        return x if self.out_proj is None else self.out_proj(x)

    @property
    def att_context(self) -> tuple:
        """The (left, right) context used by inference and streaming."""
        return tuple(self.cfg.att_context[self.context_index])

    def set_context(self, context) -> None:
        """Choose the inference context of a multi-latency model, by index or by (left, right)."""
        options = [tuple(c) for c in self.cfg.att_context]
        if isinstance(context, int) and 0 <= context < len(options):
            self.context_index = context
        elif tuple(context) in options:
            self.context_index = options.index(tuple(context))
        else:
            raise ConvformerError(f"attention context {context} is not one this model was built with: {options}")

    def _training_context(self) -> tuple:
        contexts = [tuple(c) for c in self.cfg.att_context]
        if not self.training or len(contexts) == 1:
            return self.att_context
        return random.choices(contexts, weights=self.cfg.att_context_probs or None)[0]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None):
        """features (B, T, feat_in), lengths (B,) -> encodings (B, T', out_dim), lengths (B,)."""
        if features.dim() != 3 or features.shape[-1] != self.cfg.feat_in:
            raise ConvformerError(f"expected features (batch, frames, {self.cfg.feat_in}), got {tuple(features.shape)}")
        if lengths is None:
            lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long, device=features.device)
        x, lengths = self.subsampling(features, lengths.long())
        x = self.pre_drop(x * self.xscale)
        t = x.shape[1]
        pos = torch.arange(t, device=x.device)
        table, index = relative_layout(0, t, 0, t, self.cfg.d_model, x.device)
        valid = pos.unsqueeze(0) < lengths.unsqueeze(1)
        allowed = context_allowed(pos, pos, self._training_context(), self.cfg.att_context_style)
        blocked = ~(allowed.unsqueeze(0) & valid.unsqueeze(2) & valid.unsqueeze(1))
        for layer in self.layers:
            x = layer(x, table, index, blocked, ~valid)
        return self.project(x), lengths


class ConformerCTC(nn.Module):
    """Encoder + a linear CTC head over vocab_size symbols and the blank (last index)."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConformerEncoder(cfg)
        self.head = nn.Linear(cfg.out_dim, cfg.vocab_size + 1)

    @property
    def blank(self) -> int:
        return self.cfg.vocab_size

    def convert_weights(self, state: dict, own: dict) -> tuple[dict, str]:
        """``load_weights`` hook: NeMo's key layout is recognised and renamed; ours passes through."""
        from convformer.asr.nemo_keys import from_nemo, is_nemo_layout
        if is_nemo_layout(state):
            return from_nemo(state, self.cfg.subsampling), "nemo"
        return dict(state), "convformer"

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None):
        """features (B, T, feat_in) -> CTC log-probabilities (B, T', vocab_size + 1), lengths (B,)."""
        x, lengths = self.encoder(features, lengths)
        return torch.log_softmax(self.head(x), dim=-1), lengths


def conformer_config(base: ConformerConfig, extra: tuple = (), **kwargs) -> ConformerConfig:
    """A registered configuration with keyword arguments overriding its fields (``extra`` names options the
    caller takes itself)."""
    known = set(ConformerConfig.__dataclass_fields__)
    unknown = set(kwargs) - known - {"num_classes", "img_size", *extra}
    if unknown:
        raise ConvformerError(f"unknown conformer option(s) {sorted(unknown)}; valid: {sorted(known | set(extra))}")
    values = {k: v for k, v in kwargs.items() if k in known}
    if "att_context" in values:
        values["att_context"] = tuple(tuple(c) for c in values["att_context"])
    return replace(base, **values)


def build_conformer(base: ConformerConfig, **kwargs) -> ConformerCTC:
    """A CTC Conformer from a registered configuration; keyword arguments override fields."""
    return ConformerCTC(conformer_config(base, **kwargs))


# ---- registry --------------------------------------------------------------------------------------------
from convformer.registry import ModelCard, register_model  # noqa: E402

PAPER = ("Noroozi, Majumdar, Kumar, Balam, Ginsburg. Stateful Conformer with Cache-based Inference for Streaming "
         "Automatic Speech Recognition. ICASSP 2024; Gulati et al. Conformer. Interspeech 2020")
CODE = ("https://github.com/NVIDIA/NeMo (nemo/collections/asr/modules/conformer_encoder.py)",)
PREPROCESSING = dict(sample_rate=16000, features="log-mel, NeMo conventions (see docs/asr.md)", n_mels=80,
                     window_ms=25, hop_ms=10, n_fft=512, normalize="per_feature")
MULTI_LATENCY = ((70, 13), (70, 6), (70, 1), (70, 0))
_SIZES = {
    # name: (config, params, MACs per second of audio (100 feature frames), notes)
    "conformer_ctc_xs": (ConformerConfig(d_model=96, n_layers=6, n_heads=4, subsampling="dw_striding",
                                         subsampling_factor=4, att_context=((32, 7), (32, 3), (32, 0)),
                                         att_context_style="chunked_limited"), 1_558_397, 49_979_040,
                         "Our small size for minutes of CPU training (the espeak-ng corpus); not a NeMo size."),
    "conformer_ctc_s": (ConformerConfig(d_model=176, n_layers=16, n_heads=4, subsampling="striding",
                                        subsampling_factor=4, att_context=((64, 2),)), 12_946_765, 502_428_784,
                        "NeMo Conformer-CTC Small's width and depth (d=176, 16 layers) with a causal kernel-9 "
                        "conv and a regular [64, 2] context: 2 frames of look-ahead per layer."),
    "conformer_ctc_m": (ConformerConfig(d_model=256, n_layers=18, n_heads=4, subsampling="striding",
                                        subsampling_factor=4, att_context=((64, 2),)), 30_477_085, 1_141_847_296,
                        "NeMo Conformer-CTC Medium's width and depth (d=256, 18 layers), causal as _s."),
    "fastconformer_ctc_s": (ConformerConfig(d_model=176, n_layers=16, n_heads=4, subsampling="dw_striding",
                                            subsampling_factor=8, subsampling_channels=176,
                                            att_context=MULTI_LATENCY, att_context_style="chunked_limited"), 12_423_869, 206_439_024,
                            "FastConformer-style 8x depthwise subsampling at the small size; multi-latency."),
    "fastconformer_ctc_l": (ConformerConfig(d_model=512, n_layers=17, n_heads=8, subsampling="dw_striding",
                                            subsampling_factor=8, subsampling_channels=256,
                                            att_context=MULTI_LATENCY, att_context_style="chunked_limited"), 108_908_061, 1_635_797_760,
                            "The encoder of NeMo's cache-aware streaming FastConformer large (d=512, 17 layers, "
                            "8 heads, 8x dw_striding with 256 channels, causal kernel-9 conv, contexts "
                            "[[70,13],[70,6],[70,1],[70,0]]); with a 28-character CTC head instead of NeMo's "
                            "1024-token BPE heads."),
}


def lookahead_frames(cfg: ConformerConfig, context) -> int:
    """Encoder frames a frame's output waits for: the rest of its chunk (chunked_limited) or the right
    context of every layer (regular)."""
    right = max(context[1], 0)
    return right if cfg.att_context_style == "chunked_limited" else right * cfg.n_layers


def _speech_card(name: str, cfg: ConformerConfig, params: int, macs: int, note: str) -> ModelCard:
    latency = ", ".join(f"[{l},{r}] {lookahead_frames(cfg, (l, r)) * cfg.frame_ms:.0f} ms"
                        for l, r in cfg.att_context)
    return ModelCard(
        name=name, family="conformer", task="speech", params=params, macs=macs, input_size=(100, cfg.feat_in),
        paper=PAPER, code=CODE, preprocessing=PREPROCESSING,
        notes=(note, f"{cfg.att_context_style} attention; look-ahead per context: {latency}; frame rate "
               f"{1000 / cfg.frame_ms:.1f} Hz ({cfg.frame_ms:.0f} ms frames); MACs are per second of audio.",
               "Weights load from NeMo (.nemo archives or state dicts) as well as our safetensors."))


for _name, (_cfg, _params, _macs, _note) in _SIZES.items():
    register_model(_speech_card(_name, _cfg, _params, _macs, _note), lambda c=_cfg, **kw: build_conformer(c, **kw))
