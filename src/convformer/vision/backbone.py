"""The timm model API shared by our four-stage image classifiers (MetaFormer, LowFormer).

A subclass builds ``stem``, ``stages`` (an ``nn.Sequential`` of ``Stage``), ``head`` (with ``global_pool``,
``fc`` and ``forward(x, pre_logits)`` on (B, C, H, W)), ``feature_info``, ``out_indices``, ``cfg`` (with
``img_size``) and ``classifier_name``; sets the instance attribute ``stages_channels_last`` (do its stages
pass (B, H, W, C) or (B, C, H, W) between them?) and provides ``_new_head``. Everything else a timm user
reaches for lives here once: ``forward_intermediates`` and ``prune_intermediate_layers`` with timm's
signatures, the ``features_only`` form (``FeaturesOnly``), ``pretrained_cfg``, optimizer hooks and grad
checkpointing. All of it is scriptable (TorchScript) and FX-traceable.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
from torch import nn
from torch.utils.checkpoint import checkpoint

from convformer.errors import ConvformerError


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


class Stage(nn.Module):
    """A downsampling layer, then blocks; with optional activation checkpointing per block."""

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


class PyramidClassifier(nn.Module):
    """Base of the four-stage classifiers: the timm API over a subclass's stem, stages and head."""

    __jit_unused_properties__ = ["pretrained_cfg", "default_cfg"]  # Python-only: TorchScript skips them

    def _new_head(self, num_classes: int, global_pool: str, norm: bool = True) -> nn.Module:
        raise NotImplementedError

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        """A stage output as (B, C, H, W) (a view when the stages run channels-last)."""
        return x.permute(0, 3, 1, 2) if self.stages_channels_last else x

    def _nhwc(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stages_channels_last else x.permute(0, 2, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> unpooled last-stage map (B, C, H/32, W/32)."""
        if not torch.jit.is_scripting():
            _check_input(x, self.in_chans)
        return self._nchw(self.stages(self.stem(x)))

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
        (timm's) or "NHWC". norm is accepted for compatibility: these models have no norm between the
        last stage and the head, so there is nothing to apply. Returns the list of maps if
        ``intermediates_only``, else (final map, list of maps); the final map equals
        ``forward_features(x)`` unless ``stop_early`` cut the network short.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ConvformerError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        _check_input(x, self.in_chans)
        chosen, last = take_indices(len(self.stages), indices)
        nchw = output_fmt == "NCHW"
        x, maps = self._stage_maps(x, chosen, last if stop_early else len(self.stages) - 1, nchw)
        return maps if intermediates_only else (self._nchw(x) if nchw else self._nhwc(x), maps)

    def _stage_maps(self, x: torch.Tensor, take: List[int], last: int,
                    nchw: bool = True) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem and stages 0..last; returns the last stage output (in the stages' layout) and the maps
        of the stages in ``take`` (NCHW or NHWC). Scriptable: the features_only forward runs on it too."""
        x = self.stem(x)
        maps: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if i <= last:
                x = stage(x)
                if i in take:
                    maps.append(self._nchw(x) if nchw else self._nhwc(x))
        return x, maps

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the classifier), for feature extraction.

        Returns the absolute stage indices, as timm does. The head becomes a pass-through without the
        layers sized for the last stage (as in timm), so ``forward`` returns the last kept stage's
        unpooled map."""
        chosen, last = take_indices(len(self.stages), indices)
        cut = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        self.feature_info = FeatureInfo(self.feature_info[:last + 1])
        self.out_indices = [i for i in self.out_indices if i <= last] or [last]
        if cut:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or cut:
            self.head_hidden_size = self.num_features
            self.head = self._new_head(0, "", norm=False).to(next(self.parameters()).device)
            self.num_classes = 0
        return chosen

    def get_classifier(self) -> nn.Module:
        return self.head.fc

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
        return dict(architecture=card.name if card else None, tag=None, url="", hf_hub_id=None,
                    num_classes=self.num_classes, input_size=(self.in_chans, size, size), fixed_input_size=False,
                    min_input_size=(self.in_chans, 32, 32), pool_size=(size // 32, size // 32),
                    interpolation=pre.get("interpolation", "bicubic"), crop_pct=pre.get("crop_pct", 1.0),
                    crop_mode="center", mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
                    std=tuple(pre.get("std", (0.229, 0.224, 0.225))), first_conv="stem.conv",
                    classifier=self.classifier_name, license="apache-2.0")

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



class FeaturesOnly:
    """Mixin for a classifier's ``features_only=True`` form: ``forward`` returns the stages' maps
    (B, C, H, W) at ``out_indices`` instead of logits, as in timm, and ``feature_info`` describes just
    those maps. Call ``_drop_head()`` at the end of ``__init__``. Scriptable and FX-traceable."""

    def _drop_head(self) -> None:
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)
        self.head = None

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not torch.jit.is_scripting():
            _check_input(x, self.in_chans)
        return self._stage_maps(x, self.out_indices, self.out_indices[-1])[1]
