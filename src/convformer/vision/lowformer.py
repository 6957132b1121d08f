"""LowFormer image backbones (Nottebaum et al., "LowFormer: Hardware Efficient Design for Convolutional
Transformer Backbones", WACV 2025, and the edge variants E1-E3 of "Beyond MACs", IJCV 2026; code
altair199797/LowFormer, ported to timm as ``lowformer_*``).

The design answers "MACs are not speed": a stride-2 3x3 stem, then fused MBConv blocks (one dense 3x3
expand conv instead of 1x1 + depthwise) at high resolution, and all remaining depth at 1/16 and 1/32
where the blocks are MetaFormer blocks with Lowtention as token mixer (``mixers/lowtention.py``), a
GELU MLP, and a local MBConv branch, each with its own residual. The head widens the pooled features
twice (1x1 conv + BN + Hardswish before pooling, Linear + LayerNorm + Hardswish after).

Activations are (B, C, H, W): every layer is a convolution or BatchNorm, which PyTorch runs in NCHW
or, after ``convformer.optimize``, channels-last memory. The timm API comes from ``PyramidClassifier``.
Weights load from timm's and the official layout; ``vision/lowformer_keys.py`` holds the key maps.
"""
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch
from torch import nn

from convformer.errors import ConvformerError
from convformer.layers import DropPath
from convformer.mixers.lowtention import LowtentionMixer
from convformer.vision.backbone import FeatureInfo, FeaturesOnly, PyramidClassifier, Stage, take_indices


@dataclass(frozen=True)
class LowFormerConfig:
    widths: tuple = (16, 32, 64, 128, 256)      # stem, then the four stages
    depths: tuple = (0, 1, 1, 3, 4)             # stem blocks, then blocks per stage (stages 3-4: attention)
    head_widths: tuple = (1536, 1600)           # 1x1 conv before pooling, Linear after
    expand_ratio: float = 4.0                   # MBConv expansion in the blocks
    stem_expand_ratio: float = 2.0              # ... in the stem's blocks
    down_expand_ratio: float = 4.0              # ... in each stage's stride-2 first block
    attention: bool = True                      # Lowtention branch in stages 3-4 (E1/E2: off)
    mlp: bool = True                            # MLP branch (and the pre-norms) in stages 3-4 (E-series: off)
    mlp_ratio: float = 4.0
    fused: bool = True                          # fused MBConv below 256 channels, fused output projection
    in_chans: int = 3
    num_classes: int = 1000
    img_size: int = 224                         # only describes the default input (pretrained_cfg)
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0                      # dropout before the classifier


class ConvNormAct(nn.Module):
    """Conv2d (same padding) -> optional BatchNorm -> optional Hardswish."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_dim) if norm else nn.Identity()
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class InvertedResidual(nn.Module):
    """MBConv: expand 1x1 -> depthwise 3x3 -> project 1x1 (+BN), or fused (``fused=True``): one dense
    3x3 expand conv (+BN) -> project 1x1 (+BN). With stride 1 and equal widths it is residual.

    ``bias`` puts biases on the expand (and depthwise) convs: LowFormer's attention-stage local
    branches have them, its other blocks do not."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, expand_ratio: float, fused: bool,
                 bias: bool = False, drop_path: float = 0.0):
        super().__init__()
        mid = round(in_dim * expand_ratio)
        self.residual = stride == 1 and in_dim == out_dim
        if fused:
            self.expand = ConvNormAct(in_dim, mid, 3, stride, bias=bias)
            self.dw = nn.Identity()
        else:
            self.expand = ConvNormAct(in_dim, mid, 1, bias=bias, norm=False)
            self.dw = ConvNormAct(mid, mid, 3, stride, groups=mid, bias=bias, norm=False)
        self.project = ConvNormAct(mid, out_dim, 1, act=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + self.drop_path(y) if self.residual else y


class ConvMlp(nn.Module):
    """1x1 conv (D -> ratio*D, bias) -> GELU -> 1x1 conv back (bias) -> dropout."""

    def __init__(self, dim: int, ratio: float, drop: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class LowFormerBlock(nn.Module):
    """x += mixer(norm1(x)); x += mlp(norm2(x)); x += local(x): a MetaFormer block (Lowtention mixer,
    GroupNorm(1) pre-norms) followed by an MBConv. Either of the first two branches can be absent (the
    edge variants); without the MLP the mixer has no pre-norm, as in the authors' code."""

    def __init__(self, dim: int, cfg: LowFormerConfig, att_stride: int, drop_path: float):
        super().__init__()
        self.token_mixer = LowtentionMixer(dim, att_stride=att_stride, fuse_out_proj=cfg.fused) \
            if cfg.attention else None
        self.norm1 = nn.GroupNorm(1, dim) if cfg.attention and cfg.mlp else nn.Identity()
        self.mlp = ConvMlp(dim, cfg.mlp_ratio) if cfg.mlp else None
        self.norm2 = nn.GroupNorm(1, dim) if cfg.mlp else nn.Identity()
        self.local = InvertedResidual(dim, dim, 1, cfg.expand_ratio, cfg.fused and dim < 256, bias=True,
                                      drop_path=drop_path)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path(self.token_mixer.forward_nchw(self.norm1(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.local(x)


class LowFormerStem(nn.Module):
    """Stride-2 3x3 conv + BN + Hardswish, then residual fused MBConv blocks at the same width."""

    def __init__(self, in_chans: int, dim: int, depth: int, cfg: LowFormerConfig, rates: List[float]):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 3, 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.Hardswish()
        self.blocks = nn.Sequential(*[InvertedResidual(dim, dim, 1, cfg.stem_expand_ratio, cfg.fused,
                                                       drop_path=rates[i]) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act(self.norm(self.conv(x))))


class LowFormerHead(nn.Module):
    """1x1 conv + BN + Hardswish -> global pool -> Linear (no bias) -> LayerNorm -> Hardswish -> dropout
    -> classifier. ``pre=False`` is the pass-through head of a pruned model (pooling only).
    Unpooled (``global_pool=""``), every position goes through the same layers: (B, C', H, W) out."""

    def __init__(self, dim: int, widths: Sequence[int], num_classes: int, global_pool: str, drop: float = 0.0,
                 pre: bool = True):
        super().__init__()
        if global_pool not in ("avg", "max", ""):
            raise ConvformerError(f"global_pool must be 'avg', 'max' or '' (none), got {global_pool!r}")
        self.global_pool = global_pool
        self.conv = ConvNormAct(dim, widths[0], 1) if pre else nn.Identity()
        self.fc1 = nn.Linear(widths[0], widths[1], bias=False) if pre else nn.Identity()
        self.norm = nn.LayerNorm(widths[1]) if pre else nn.Identity()
        self.act = nn.Hardswish() if pre else nn.Identity()
        self.drop = nn.Dropout(drop)
        out = widths[1] if pre else dim
        self.fc = nn.Linear(out, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.conv(x)
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        else:
            x = x.permute(0, 2, 3, 1)
        x = self.drop(self.act(self.norm(self.fc1(x))))
        if not pre_logits:
            x = self.fc(x)
        return x if self.global_pool != "" else x.permute(0, 3, 1, 2)


class LowFormer(PyramidClassifier):
    """LowFormer classifier with the timm model API (see module docstring)."""

    def __init__(self, cfg: LowFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if len(cfg.widths) != 5 or len(cfg.depths) != 5:
            raise ConvformerError("LowFormer takes five widths and depths: the stem's, then four stages'")
        if min(cfg.depths[1:3]) < 1:
            raise ConvformerError("LowFormer's convolutional stages 1-2 need at least one block (their first "
                                  "block downsamples)")
        self.cfg = cfg
        self.stages_channels_last = False
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        self.num_features = cfg.widths[-1]
        self.head_hidden_size = cfg.head_widths[-1]
        self.classifier_name = "head.fc"
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.stem = LowFormerStem(cfg.in_chans, cfg.widths[0], cfg.depths[0], cfg, rates[:cfg.depths[0]])
        rates = rates[cfg.depths[0]:]
        stages, info, prev = [], FeatureInfo(), cfg.widths[0]
        for i, (dim, depth) in enumerate(zip(cfg.widths[1:], cfg.depths[1:])):
            down = InvertedResidual(prev, dim, 2, cfg.down_expand_ratio, cfg.fused)
            stage_rates, rates = rates[:depth], rates[depth:]
            if i < 2:  # convolutional stage: the downsampling block counts as its first block
                blocks = [InvertedResidual(dim, dim, 1, cfg.expand_ratio, cfg.fused, drop_path=r)
                          for r in stage_rates[1:]]
            else:      # attention stage: attention on a 2x smaller map at 1/16, full map at 1/32
                blocks = [LowFormerBlock(dim, cfg, 2 if i == 2 else 1, r) for r in stage_rates]
            stages.append(Stage(down, blocks))
            info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"stages.{i}", stage=i))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.feature_info = info
        self.out_indices: List[int] = take_indices(len(stages), list(out_indices))[0]
        self.head = self._new_head(cfg.num_classes, "avg")
        self.apply(_init_weights)

    def _new_head(self, num_classes: int, global_pool: str, norm: bool = True) -> LowFormerHead:
        return LowFormerHead(self.num_features, self.cfg.head_widths, num_classes, global_pool,
                             self.cfg.drop_rate, pre=norm)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (num_classes=0 removes it); global_pool '' returns unpooled maps."""
        ref = self.stem.conv.weight
        width = self.head_hidden_size
        self.head.fc = (nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()).to(ref.device, ref.dtype)
        self.head.fc.apply(_init_weights)
        if global_pool is not None:
            if global_pool not in ("avg", "max", ""):
                raise ConvformerError(f"global_pool must be 'avg', 'max' or '' (none), got {global_pool!r}")
            self.head.global_pool = global_pool
        self.num_classes = num_classes

    @torch.jit.ignore
    def convert_weights(self, state: dict, own: dict) -> tuple[dict, str]:
        """Rename timm's or the official layout's keys to ours (see ``vision/lowformer_keys.py``)."""
        from convformer.vision.lowformer_keys import to_our_names
        return to_our_names(state, self.cfg)

    @torch.jit.ignore
    def layout_state_dict(self, layout: str) -> dict:
        """The state dict under another layout's names: "timm" or "official" (the authors' code)."""
        from convformer.vision.lowformer_keys import rename
        return {k: v.clone() for k, v in rename(self.state_dict(), self.cfg, "convformer", layout).items()}


class LowFormerFeatures(FeaturesOnly, LowFormer):
    """``features_only=True`` (see ``FeaturesOnly``)."""

    def __init__(self, cfg: LowFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__(replace(cfg, num_classes=0), out_indices)
        self._drop_head()


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_lowformer(cfg: LowFormerConfig, **overrides) -> LowFormer:
    """Build from a base config; keyword overrides set config fields (num_classes, drop_path_rate, ...).
    ``global_pool`` is accepted like timm's (it sets the head's pooling)."""
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", (0, 1, 2, 3))
    global_pool = overrides.pop("global_pool", "avg")
    unknown = set(overrides) - set(LowFormerConfig.__dataclass_fields__)
    if unknown:
        raise ConvformerError(f"unknown model option(s) {sorted(unknown)}; valid: "
                              f"{sorted(LowFormerConfig.__dataclass_fields__)}")
    cfg = replace(cfg, **overrides)
    if features_only:
        return LowFormerFeatures(cfg, out_indices)
    model = LowFormer(cfg, out_indices)
    if global_pool != "avg":
        model.head = model._new_head(cfg.num_classes, global_pool)
    return model


# -- registered variants ---------------------------------------------------------------------------
PAPER = "Nottebaum et al., LowFormer: Hardware Efficient Design for Convolutional Transformer Backbones, WACV 2025"
PAPER_E = ("Nottebaum et al., Beyond MACs: Hardware Efficient Architecture Design for Vision Backbones, IJCV 2026 "
           "(E1-E3); " + PAPER)
CODE = ("https://github.com/altair199797/LowFormer",
        "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/lowformer.py")
_B1 = dict(down_expand_ratio=6.0)                      # the authors' "bigit": 6x expansion when downsampling
_BIG_HEAD = dict(head_widths=(2304, 2560))
_B3 = dict(widths=(32, 64, 128, 256, 512), stem_expand_ratio=4.0, down_expand_ratio=6.0)
# name: (config fields, exact params at 1000 classes, exact MACs at 224, paper params M, paper MACs G, top-1)
VARIANTS = {
    "b0": (dict(depths=(0, 1, 1, 3, 4)), 14_100_472, 944_042_240, 14.1, 0.944, 78.4),
    "b1": (dict(depths=(0, 1, 1, 5, 5), **_B1), 17_936_312, 1_410_980_096, 17.9, 1.411, 79.9),
    "b15": (dict(widths=(20, 40, 80, 160, 320), depths=(0, 1, 1, 6, 6), **_B1, **_BIG_HEAD),
            33_982_028, 2_573_737_600, 33.9, 2.574, 81.2),
    "b3": (dict(depths=(1, 2, 3, 6, 6), **_B3), 57_086_920, 6_098_685_440, 57.1, 6.099, 83.6),
    "e1": (dict(widths=(20, 40, 80, 160, 320), depths=(0, 1, 1, 4, 4), attention=False, mlp=False, **_B1,
                **_BIG_HEAD), 18_896_268, 1_348_157_440, None, 1.35, 78.8),
    "e2": (dict(depths=(1, 2, 3, 4, 4), attention=False, mlp=False, **_B3), 22_750_664, 3_789_335_040,
           None, 3.8, 81.6),
    "e3": (dict(depths=(1, 2, 3, 6, 6), mlp=False, **_B3), 41_316_808, 4_865_560_064, None, 5.35, 83.0),
}
NOTES = {
    "e3": ("The journal lists 5350M MACs; the network it describes (B3 without the MLP branches), as built by "
           "the authors' lowformer_model.py and by timm, counts 4866M. Parameters equal timm's port.",),
    "e1": ("Edge-GPU variant: no attention and no MLP branches (B1.5 widths, depths 4/4). Parameters equal "
           "timm's port (the journal gives no count).",),
    "e2": ("Edge-GPU variant: no attention and no MLP branches (B3 widths, depths 4/4). Parameters equal "
           "timm's port (the journal gives no count).",),
}


def _register_variants() -> None:
    from convformer.registry import IMAGENET_MEAN, IMAGENET_STD, ModelCard, WeightSource, register_model
    for size, (fields, params, macs, paper_params, paper_macs, top1) in VARIANTS.items():
        name = f"lowformer_{size}"
        cfg = replace(LowFormerConfig(), **fields)
        official = "E" + size[1] if size.startswith("e") else size
        card = ModelCard(
            name=name, family="lowformer", params=params, macs=macs, paper_params_m=paper_params,
            paper_macs_g=paper_macs, metrics={"in1k_224": top1},
            paper=PAPER_E if size.startswith("e") else PAPER, code=CODE,
            weights=(WeightSource("in1k", f"timm/{name}.in1k", "model.safetensors", "timm", 1000, 224, top1),
                     WeightSource("official_in1k", "github:altair199797/LowFormer", f"{official}/evalmodel.pt",
                                  "official", 1000, 224, top1)),
            preprocessing=dict(interpolation="bicubic", crop_pct=0.95, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            notes=NOTES.get(size, ()))

        def builder(_cfg=cfg, **kwargs):
            return build_lowformer(_cfg, **kwargs)
        register_model(card, builder)


_register_variants()
