"""MetaFormer image backbones: IdentityFormer, RandFormer, PoolFormer(V2), ConvFormer and CAFormer.

Follows Yu et al., "MetaFormer Baselines for Vision" (TPAMI 2024; code sail-sg/metaformer) and, for the
original PoolFormer, "MetaFormer Is Actually What You Need for Vision" as ported by timm. One network,
four stages; what distinguishes the families is the token mixer per stage, the norm kind and the head.

Inside the stages activations are channels-last (B, H, W, C) so every norm and MLP is a plain
last-dimension op; public outputs (``forward_features``, feature maps) are (B, C, H, W) like timm.
Module names match timm's, so timm checkpoints load by reshaping 1x1-conv weights only.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Optional, Sequence

import torch
import torch.fx
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConvformerError
from ..layers import (ChannelLayerNorm, Downsample, DropPath, Mlp, Scale, SpatialChannelNorm,
                      SquaredReLU, StarReLU, Stem)
from ..mixers import MIXERS


@dataclass(frozen=True)
class MetaFormerConfig:
    depths: tuple = (2, 2, 6, 2)
    dims: tuple = (64, 128, 320, 512)
    mixers: tuple = ("identity",) * 4          # one MIXERS key per stage
    norm: str = "channel"                       # "channel" (LayerNorm over C) or "spatial" (over H,W,C)
    norm_eps: float = 1e-6
    norm_bias: bool = False
    mlp_act: str = "starrelu"                   # "starrelu" or "gelu"
    mlp_bias: bool = False
    layer_scale: Optional[float] = None         # init of the per-branch layer scale, None = off
    res_scale: tuple = (None, None, 1.0, 1.0)   # init of the residual scale per stage, None = off
    down_norm: bool = True                      # LayerNorm in the stem (post) and downsampling (pre)
    head: str = "linear"                        # "linear" or "mlp" (MlpHead)
    head_norm_eps: float = 1e-5                 # MlpHead's inner LayerNorm eps (official 1e-5, timm 1e-6)
    in_chans: int = 3
    num_classes: int = 1000
    img_size: int = 224                         # only RandFormer depends on it
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0                      # dropout before the classifier
    global_pool: str = "avg"


def _check_input(x: torch.Tensor, in_chans: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ConvformerError(f"expected images shaped (B, {in_chans}, H, W), got {tuple(x.shape)}")
    if x.shape[2] < 32 or x.shape[3] < 32:
        raise ConvformerError(f"images must be at least 32x32 (sides a multiple of 32 are best), "
                              f"got {x.shape[2]}x{x.shape[3]}")


torch.fx.wrap("_check_input")


class FeatureInfo(list):
    """timm-style feature description: a list of dicts with helpers for channels and reductions."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class MetaFormerBlock(nn.Module):
    """x = res_scale(x) + layer_scale(drop_path(mixer(norm(x)))), then the same around the MLP."""

    def __init__(self, dim: int, mixer: nn.Module, norm, act, mlp_bias: bool, drop_path: float,
                 layer_scale: Optional[float], res_scale: Optional[float]):
        super().__init__()
        def scale(init):
            return Scale(dim, init) if init is not None else nn.Identity()
        self.norm1 = norm(dim)
        self.token_mixer = mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = scale(layer_scale)
        self.res_scale1 = scale(res_scale)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, 4.0, act=act, bias=mlp_bias)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = scale(layer_scale)
        self.res_scale2 = scale(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _residual(x, self.drop_path1(self.token_mixer(self.norm1(x))), self.res_scale1, self.layer_scale1)
        return _residual(x, self.drop_path2(self.mlp(self.norm2(x))), self.res_scale2, self.layer_scale2)


def _residual(x: torch.Tensor, y: torch.Tensor, res_scale: nn.Module, layer_scale: nn.Module) -> torch.Tensor:
    """res_scale(x) + layer_scale(y) as one fused multiply-add (one memory pass instead of two or three)."""
    rs = res_scale.scale if isinstance(res_scale, Scale) else None
    ls = layer_scale.scale if isinstance(layer_scale, Scale) else None
    if rs is None:
        return x + y if ls is None else torch.addcmul(x, y, ls)
    return torch.addcmul(y if ls is None else y * ls, x, rs)


class MetaFormerStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class MlpHead(nn.Module):
    """Linear(D -> 4D) -> SquaredReLU -> LayerNorm -> dropout -> Linear(4D -> classes)."""

    def __init__(self, dim: int, num_classes: int, eps: float, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = SquaredReLU()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.head_drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(4 * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.head_drop(self.norm(self.act(self.fc1(x)))))


class ClassifierHead(nn.Module):
    """Global pooling -> LayerNorm (with bias) -> dropout -> classifier (Linear, MlpHead or nothing)."""

    def __init__(self, cfg: MetaFormerConfig, num_classes: int, global_pool: str):
        super().__init__()
        dim = cfg.dims[-1]
        if global_pool not in ("avg", "max", ""):
            raise ConvformerError(f"global_pool must be 'avg', 'max' or '' (none), got {global_pool!r}")
        self.global_pool = global_pool
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.drop = nn.Dropout(cfg.drop_rate)
        if num_classes <= 0:
            self.fc = nn.Identity()
        elif cfg.head == "mlp":
            self.fc = MlpHead(dim, num_classes, cfg.head_norm_eps)
        else:
            self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # x: (B, C, H, W)
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        else:  # unpooled: norm and classify every position, return (B, C', H, W)
            x = self.drop(self.norm(x.permute(0, 2, 3, 1)))
            return (x if pre_logits else self.fc(x)).permute(0, 3, 1, 2)
        x = self.drop(self.norm(x))
        return x if pre_logits else self.fc(x)


class MetaFormer(nn.Module):
    """The four-stage MetaFormer with the timm model API (see module docstring)."""

    def __init__(self, cfg: MetaFormerConfig, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = cfg.dims[-1]
        self.features_only = features_only
        norm_cls = ChannelLayerNorm if cfg.norm == "channel" else SpatialChannelNorm
        norm = partial(norm_cls, eps=cfg.norm_eps, bias=cfg.norm_bias)
        act = StarReLU if cfg.mlp_act == "starrelu" else nn.GELU
        down_norm = partial(ChannelLayerNorm, eps=1e-6) if cfg.down_norm else None

        self.stem = Stem(cfg.in_chans, cfg.dims[0], norm=down_norm)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        stages, info, prev = [], FeatureInfo(), cfg.dims[0]
        for i, (depth, dim, mixer_name) in enumerate(zip(cfg.depths, cfg.dims, cfg.mixers)):
            stride = 2 ** (i + 2)
            mixer_kwargs = {}
            if mixer_name == "random":
                side = cfg.img_size // stride
                mixer_kwargs = dict(num_tokens=side * side, image_size=cfg.img_size, stride=stride)
            blocks = [MetaFormerBlock(dim, MIXERS[mixer_name](dim, **mixer_kwargs), norm, act,
                                      cfg.mlp_bias, rates.pop(0), cfg.layer_scale, cfg.res_scale[i])
                      for _ in range(depth)]
            downsample = nn.Identity() if i == 0 else Downsample(prev, dim, norm=down_norm)
            stages.append(MetaFormerStage(downsample, blocks))
            info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.out_indices = tuple(out_indices)
        if features_only:
            bad = [i for i in self.out_indices if not 0 <= i < len(stages)]
            if bad:
                raise ConvformerError(f"out_indices {bad} out of range: the model has stages 0..{len(stages) - 1}")
            self.feature_info = FeatureInfo(info[i] for i in self.out_indices)
            self.head = None
        else:
            self.feature_info = info
            self.head = ClassifierHead(cfg, cfg.num_classes, cfg.global_pool)
        self.apply(_init_weights)

    # -- timm-compatible API -------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> unpooled last-stage map (B, C, H/32, W/32)."""
        _check_input(x, self.in_chans)
        return self.stages(self.stem(x)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps (B, C, H, W) of the stages in ``out_indices``."""
        _check_input(x, self.in_chans)
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                feats.append(x.permute(0, 3, 1, 2))
        return feats

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (num_classes=0 removes it); global_pool '' returns unpooled maps."""
        pool = self.head.global_pool if global_pool is None else global_pool
        old = self.head
        self.head = ClassifierHead(self.cfg, num_classes, pool)
        self.head.norm.load_state_dict(old.norm.state_dict())
        self.head.fc.apply(_init_weights)
        self.head.train(old.training)
        self.head.to(old.norm.weight.device, old.norm.weight.dtype)
        self.num_classes = num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @property
    def pretrained_cfg(self) -> dict:
        card = getattr(self, "model_card", None)
        pre = card.preprocessing if card else {}
        size = self.cfg.img_size
        return dict(input_size=(self.in_chans, size, size), num_classes=self.num_classes,
                    interpolation=pre.get("interpolation", "bicubic"), crop_pct=pre.get("crop_pct", 1.0),
                    mean=tuple(pre.get("mean", ())), std=tuple(pre.get("std", ())),
                    first_conv="stem.conv", classifier="head.fc")

    def no_weight_decay_keys(self) -> set[str]:
        """Parameter names that should get no weight decay: norms, biases, scales, StarReLU scalars."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_metaformer(cfg: MetaFormerConfig, **overrides) -> MetaFormer:
    """Build from a base config; keyword overrides set config fields (num_classes, img_size, ...)."""
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", (0, 1, 2, 3))
    unknown = set(overrides) - set(MetaFormerConfig.__dataclass_fields__)
    if unknown:
        raise ConvformerError(f"unknown model option(s) {sorted(unknown)}; valid: "
                              f"{sorted(MetaFormerConfig.__dataclass_fields__)}")
    return MetaFormer(replace(cfg, **overrides), features_only=features_only, out_indices=out_indices)
