"""MetaFormer backbones for torchvision's detection heads (Faster R-CNN, RetinaNet, Mask R-CNN, FCOS).

torchvision's detectors take a ``backbone`` module that maps a batch of images to an ordered dict of
feature maps and says how many channels those maps have (``out_channels``). A feature pyramid network
(FPN) turns a multi-scale feature extractor into exactly that: it gives every level the same width and
passes coarse context down to the fine levels. ``fpn_backbone`` wires any of our classification models,
in its ``features_only`` form, into torchvision's FPN.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from convformer.errors import ConvformerError


class FPNBackbone(nn.Module):
    """A features_only MetaFormer followed by torchvision's FeaturePyramidNetwork.

    Output: OrderedDict "0", "1", ... (one per taken stage, fine to coarse) plus "pool" (a max-pooled
    extra level, which torchvision's default anchor generator for 5 levels expects) of
    (B, out_channels, H/r, W/r) maps."""

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_pool_level: bool = True):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
        if not hasattr(body, "feature_info") or getattr(body, "head", None) is not None:
            raise ConvformerError("FPNBackbone needs a model created with features_only=True")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool_level else None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def fpn_backbone(name: str, out_indices: Sequence[int] = (0, 1, 2, 3), out_channels: int = 256,
                 pretrained: bool | str = False, frozen_stages: int = 0,
                 extra_pool_level: bool = True, **kwargs) -> FPNBackbone:
    """A registered classification model as a detection backbone with an FPN.

    ``pretrained`` loads ImageNet weights as in ``create_model`` (the classifier is dropped).
    ``frozen_stages`` stops gradients to the stem and the first n stages, the usual detection
    fine-tuning choice. Other keywords go to ``create_model`` (e.g. ``drop_path_rate``)."""
    from convformer.registry import create_model, model_card
    if model_card(name).task != "classification":
        raise ConvformerError(f"{name} is not an image classification backbone")
    body = create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices), **kwargs)
    n_stages = len(body.stages)
    if not 0 <= frozen_stages <= n_stages:
        raise ConvformerError(f"frozen_stages must be 0..{n_stages}, got {frozen_stages}")
    if frozen_stages:
        for part in [body.stem] + [body.stages[i] for i in range(frozen_stages)]:
            for p in part.parameters():
                p.requires_grad_(False)
    return FPNBackbone(body, out_channels, extra_pool_level)
