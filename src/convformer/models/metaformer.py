"""MetaFormer image backbones: IdentityFormer, RandFormer, PoolFormer(V2), ConvFormer and CAFormer.

Follows Yu et al., "MetaFormer Baselines for Vision" (TPAMI 2024; code sail-sg/metaformer) and, for the
original PoolFormer, "MetaFormer Is Actually What You Need for Vision" as ported by timm. One network,
four stages; what distinguishes the families is the token mixer per stage, the norm kind and the head.

Inside the stages activations are channels-last (B, H, W, C) so every norm and MLP is a plain
last-dimension op; public outputs (``forward_features``, feature maps) are (B, C, H, W) like timm.
Module names match timm's, so timm checkpoints load by reshaping 1x1-conv weights only.
"""

from dataclasses import dataclass, replace
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

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


class MetaFormerStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not torch.jit.is_scripting():
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


def take_indices(num_stages: int, indices: Optional[Union[int, Sequence[int]]]) -> Tuple[List[int], int]:
    """timm's convention for choosing stages: None = all, an int n = the last n, a sequence = those
    (negative counts from the end). Returns (sorted absolute indices, the largest)."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ConvformerError(f"cannot take the last {indices} stages of {num_stages}")
        chosen = list(range(num_stages - indices, num_stages))
    else:
        chosen = []
        for i in indices:
            if not -num_stages <= i < num_stages:
                raise ConvformerError(f"stage index {i} out of range: the model has stages 0..{num_stages - 1}")
            chosen.append(i % num_stages)
        if not chosen:
            raise ConvformerError("indices is empty: name at least one stage")
        chosen = sorted(set(chosen))
    return chosen, chosen[-1]


class MetaFormer(nn.Module):
    """The four-stage MetaFormer with the timm model API (see module docstring)."""

    __jit_unused_properties__ = ["pretrained_cfg", "default_cfg"]  # Python-only: TorchScript skips them

    def __init__(self, cfg: MetaFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = cfg.dims[-1]
        norm_cls = ChannelLayerNorm if cfg.norm == "channel" else SpatialChannelNorm
        norm = partial(norm_cls, eps=cfg.norm_eps, bias=cfg.norm_bias)
        act = StarReLU if cfg.mlp_act == "starrelu" else nn.GELU
        down_norm = partial(ChannelLayerNorm, eps=1e-6) if cfg.down_norm else None

        self.stem = Stem(cfg.in_chans, cfg.dims[0], norm=down_norm)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
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

    # -- timm-compatible API -------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> unpooled last-stage map (B, C, H/32, W/32)."""
        if not torch.jit.is_scripting():
            _check_input(x, self.in_chans)
        return self.stages(self.stem(x)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs, with timm's signature and meaning.

        indices: None = every stage, n = the last n, a sequence = those stages. stop_early: skip the
        stages after the last one taken (the final output is then that stage's map). output_fmt: "NCHW"
        (timm's) or "NHWC" (our internal layout, no permute). norm is accepted for compatibility: a
        MetaFormer has no norm between its last stage and the pooling, so there is nothing to apply.
        Returns the list of maps if ``intermediates_only``, else (final map, list of maps); the final
        map equals ``forward_features(x)`` unless ``stop_early`` cut the network short.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ConvformerError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        _check_input(x, self.in_chans)
        chosen, last = take_indices(len(self.stages), indices)
        nchw = output_fmt == "NCHW"
        x, maps = self._stage_maps(x, chosen, last if stop_early else len(self.stages) - 1, nchw)
        return maps if intermediates_only else (x.permute(0, 3, 1, 2) if nchw else x, maps)

    def _stage_maps(self, x: torch.Tensor, take: List[int], last: int,
                    nchw: bool = True) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem and stages 0..last; returns the last map (B, H, W, C) and the maps of the stages in
        ``take`` (NCHW views or NHWC). Scriptable: the features_only forward runs on it too."""
        x = self.stem(x)
        maps: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if i <= last:
                x = stage(x)
                if i in take:
                    maps.append(x.permute(0, 3, 1, 2) if nchw else x)
        return x, maps

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the classifier), for feature extraction.

        Returns the absolute stage indices, as timm does. The head becomes a pass-through without its
        norm, as in timm (the norm belonged to the last stage's width), so ``forward`` returns the last
        kept stage's unpooled map."""
        chosen, last = take_indices(len(self.stages), indices)
        cut = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        self.feature_info = FeatureInfo(self.feature_info[:last + 1])
        self.out_indices = [i for i in self.out_indices if i <= last] or [last]
        if cut:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or cut:
            self.head = self._new_head(0, "", norm=False).to(self.stem.conv.weight.device)
            self.num_classes = 0
        return chosen

    def get_classifier(self) -> nn.Module:
        return self.head.fc

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

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (timm's ``param_groups_layer_decay``)."""
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                           (r"^stages\.(\d+)\.downsample", (0,)), (r"^head\.norm", (99999,))])

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg: the keys timm's data helpers (``resolve_data_config``), tests and
        factories read, filled from the model card."""
        card = getattr(self, "model_card", None)
        pre = card.preprocessing if card else {}
        size = self.cfg.img_size
        classifier = "head.fc.fc2" if self.cfg.head == "mlp" else "head.fc"
        return dict(architecture=card.name if card else None, tag=None, url="", hf_hub_id=None,
                    num_classes=self.num_classes, input_size=(self.in_chans, size, size), fixed_input_size=False,
                    min_input_size=(self.in_chans, 32, 32), pool_size=(size // 32, size // 32),
                    interpolation=pre.get("interpolation", "bicubic"), crop_pct=pre.get("crop_pct", 1.0),
                    crop_mode="center", mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
                    std=tuple(pre.get("std", (0.229, 0.224, 0.225))), first_conv="stem.conv",
                    classifier=classifier, license="apache-2.0")

    @property
    def default_cfg(self) -> dict:
        """The older name of ``pretrained_cfg`` (timm keeps both)."""
        return self.pretrained_cfg

    def no_weight_decay_keys(self) -> set[str]:
        """Parameter names that should get no weight decay: norms, biases, scales, StarReLU scalars."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's name for ``no_weight_decay_keys`` (read by ``timm.optim.create_optimizer_v2``)."""
        return self.no_weight_decay_keys()


class MetaFormerFeatures(MetaFormer):
    """``features_only=True``: the stages' maps (B, C, H, W) at ``out_indices`` instead of logits, as in
    timm; ``feature_info`` describes just those maps. Scriptable and FX-traceable like the classifier."""

    def __init__(self, cfg: MetaFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__(replace(cfg, num_classes=0), out_indices)
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)
        self.head = None

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not torch.jit.is_scripting():
            _check_input(x, self.in_chans)
        return self._stage_maps(x, self.out_indices, self.out_indices[-1])[1]


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
    cls = MetaFormerFeatures if features_only else MetaFormer
    return cls(replace(cfg, **overrides), out_indices=out_indices)
