"""MetaFormer image backbones: IdentityFormer, RandFormer, PoolFormer(V2), ConvFormer and CAFormer.

Follows Yu et al., "MetaFormer Baselines for Vision" (TPAMI 2024; code sail-sg/metaformer) and, for the
original PoolFormer, "MetaFormer Is Actually What You Need for Vision" as ported by timm. One network,
four stages; what distinguishes the families is the token mixer per stage, the norm kind and the head.
Any mixer in ``MIXERS`` can sit in any stage (``mixers=`` one name per stage, see :func:`build_mixer`).

Inside the stages activations are channels-last (B, H, W, C) so every norm and MLP is a plain
last-dimension op; public outputs (``forward_features``, feature maps) are (B, C, H, W) like timm.
Module names match timm's, so timm checkpoints load by reshaping 1x1-conv weights only.
"""

from dataclasses import dataclass, replace
from functools import partial
from typing import List, Optional, Sequence

import torch
import torch.fx
from torch import nn

from convformer.errors import ConvformerError
from convformer.vision.backbone import FeatureInfo, FeaturesOnly, PyramidClassifier, Stage, take_indices
from convformer.layers import (ChannelLayerNorm, Downsample, DropPath, Mlp, Scale, SpatialChannelNorm,
                      SquaredReLU, StarReLU, Stem)
from convformer.mixers import MIXERS, SEQUENCE_MIXERS, FlattenedImageMixer


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
    img_size: int = 224                         # only fixed-token-count mixers (random) depend on it
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0                      # dropout before the classifier
    global_pool: str = "avg"


def check_layout(cfg: MetaFormerConfig) -> None:
    """Fail early, in one line, on a stage layout the network cannot be built from."""
    n = len(cfg.depths)
    if len(cfg.dims) != n or len(cfg.mixers) != n or len(cfg.res_scale) != n:
        raise ConvformerError(f"depths, dims, mixers and res_scale need one entry per stage, got "
                              f"{len(cfg.depths)}, {len(cfg.dims)}, {len(cfg.mixers)} and {len(cfg.res_scale)}")
    unknown = [m for m in cfg.mixers if m not in MIXERS]
    if unknown:
        raise ConvformerError(f"unknown mixer(s) {unknown}; valid: {', '.join(sorted(MIXERS))}")


def build_mixer(name: str, dim: int, stage_stride: int, img_size: int) -> nn.Module:
    """One stage's token mixer, given everything any mixer may need to know about where it sits.

    Every mixer ignores what it does not use, so one call serves all of them: ``stage_stride`` (the
    stage's reduction, which sets Lowtention's attention stride) and, for mixers whose weights depend
    on the token count (RandFormer's matrix), ``num_tokens``/``image_size``/``stride`` at ``img_size``.
    Sequence mixers are wrapped to flatten the map into a sequence of H*W tokens."""
    side = img_size // stage_stride
    mixer = MIXERS[name](dim, stage_stride=stage_stride, num_tokens=side * side, image_size=img_size,
                         stride=stage_stride)
    return FlattenedImageMixer(mixer) if name in SEQUENCE_MIXERS else mixer


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
        y = self.drop_path1(self.token_mixer(self.norm1(x)))
        if torch.jit.is_scripting():  # TorchScript cannot look inside the scale modules
            x = self.res_scale1(x) + self.layer_scale1(y)
            return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        else:
            x = _residual(x, y, self.res_scale1, self.layer_scale1)
            return _residual(x, self.drop_path2(self.mlp(self.norm2(x))), self.res_scale2, self.layer_scale2)


def _residual(x: torch.Tensor, y: torch.Tensor, res_scale: nn.Module, layer_scale: nn.Module) -> torch.Tensor:
    """res_scale(x) + layer_scale(y) as one fused multiply-add (one memory pass instead of two or three)."""
    rs = res_scale.scale if isinstance(res_scale, Scale) else None
    ls = layer_scale.scale if isinstance(layer_scale, Scale) else None
    if rs is None:
        return x + y if ls is None else torch.addcmul(x, y, ls)
    return torch.addcmul(y if ls is None else y * ls, x, rs)


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
    """Global pooling -> LayerNorm (with bias) -> dropout -> classifier (Linear, MlpHead or nothing).

    ``norm=False`` leaves the norm out: the pass-through head of a model pruned to its early stages."""

    def __init__(self, dim: int, num_classes: int, global_pool: str, kind: str = "linear",
                 mlp_norm_eps: float = 1e-5, drop: float = 0.0, norm: bool = True):
        super().__init__()
        if global_pool not in ("avg", "max", ""):
            raise ConvformerError(f"global_pool must be 'avg', 'max' or '' (none), got {global_pool!r}")
        self.global_pool = global_pool
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm else nn.Identity()
        self.drop = nn.Dropout(drop)
        if num_classes <= 0:
            self.fc = nn.Identity()
        elif kind == "mlp":
            self.fc = MlpHead(dim, num_classes, mlp_norm_eps)
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


class MetaFormer(PyramidClassifier):
    """The four-stage MetaFormer; the timm model API comes from ``PyramidClassifier``."""

    def __init__(self, cfg: MetaFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        self.cfg = cfg
        self.stages_channels_last = True
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = cfg.dims[-1]
        self.classifier_name = "head.fc.fc2" if cfg.head == "mlp" else "head.fc"
        norm_cls = ChannelLayerNorm if cfg.norm == "channel" else SpatialChannelNorm
        norm = partial(norm_cls, eps=cfg.norm_eps, bias=cfg.norm_bias)
        act = StarReLU if cfg.mlp_act == "starrelu" else nn.GELU
        down_norm = partial(ChannelLayerNorm, eps=1e-6) if cfg.down_norm else None

        self.stem = Stem(cfg.in_chans, cfg.dims[0], norm=down_norm)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        stages, info, prev = [], FeatureInfo(), cfg.dims[0]
        check_layout(cfg)
        for i, (depth, dim, mixer_name) in enumerate(zip(cfg.depths, cfg.dims, cfg.mixers)):
            stride = 2 ** (i + 2)
            blocks = [MetaFormerBlock(dim, build_mixer(mixer_name, dim, stride, cfg.img_size), norm, act,
                                      cfg.mlp_bias, rates.pop(0), cfg.layer_scale, cfg.res_scale[i])
                      for _ in range(depth)]
            downsample = nn.Identity() if i == 0 else Downsample(prev, dim, norm=down_norm)
            stages.append(Stage(downsample, blocks))
            info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}", stage=i))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.feature_info = info
        self.out_indices: List[int] = take_indices(len(stages), list(out_indices))[0]
        self.head = self._new_head(cfg.num_classes, cfg.global_pool)
        self.apply(_init_weights)

    def _new_head(self, num_classes: int, global_pool: str, norm: bool = True) -> ClassifierHead:
        return ClassifierHead(self.num_features, num_classes, global_pool, self.cfg.head, self.cfg.head_norm_eps,
                              self.cfg.drop_rate, norm)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (num_classes=0 removes it); global_pool '' returns unpooled maps."""
        pool = self.head.global_pool if global_pool is None else global_pool
        old = self.head
        self.head = self._new_head(num_classes, pool, norm=isinstance(old.norm, nn.LayerNorm))
        self.head.norm.load_state_dict(old.norm.state_dict())
        self.head.fc.apply(_init_weights)
        self.head.train(old.training)
        self.head.to(self.stem.conv.weight.device, self.stem.conv.weight.dtype)
        self.num_classes = num_classes


class MetaFormerFeatures(FeaturesOnly, MetaFormer):
    """``features_only=True`` (see ``FeaturesOnly``)."""

    def __init__(self, cfg: MetaFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__(replace(cfg, num_classes=0), out_indices)
        self._drop_head()


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
    for key in ("depths", "dims", "mixers", "res_scale"):  # JSON/YAML give lists
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(overrides[key])
    cls = MetaFormerFeatures if features_only else MetaFormer
    return cls(replace(cfg, **overrides), out_indices=out_indices)
