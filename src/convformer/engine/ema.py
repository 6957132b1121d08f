"""Exponential moving average of model weights (evaluated beside the raw weights)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """ema = decay * ema + (1 - decay) * weights after every optimizer step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            from convformer.errors import ConvformerError
            raise ConvformerError(f"--ema-decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.module.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if value.is_floating_point():
                target.lerp_(value.detach(), 1.0 - self.decay)
            else:
                target.copy_(value)
