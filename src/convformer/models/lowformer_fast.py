"""LowFormer's inference fast path (``convformer.optimize`` on a LowFormer).

Folding, all exact up to float rounding:

* every BatchNorm into the convolution before it (stem, fused and plain MBConv, Lowtention's
  downsampling conv, the head's 1x1 conv), with ``torch.nn.utils.fusion.fuse_conv_bn_eval``;
* the MLP's GroupNorm affine (per-channel scale and shift) into the MLP's first 1x1 conv, whose input
  it is, so the norm only normalises. The pre-norm of the attention branch stays: its shift would
  meet the zero padding of the depthwise conv after it, which a fold cannot reproduce at the borders.

Then the weights go to channels-last memory, where oneDNN's convolutions are fastest for batches;
inputs in NCHW are accepted (PyTorch converts them at the first conv). At batch 1 the channels-last
convolutions measured slower, so ``FastLowFormer`` keeps a second, NCHW copy of the folded network
for batches below ``batch_threshold`` (the weights of a LowFormer are small: 14-57 M parameters).
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..mixers.lowtention import LowtentionMixer
from .lowformer import ConvNormAct, LowFormer, LowFormerBlock, LowFormerStem


@torch.no_grad()
def fold_lowformer(model: LowFormer) -> LowFormer:
    """Fold in place (see module docstring); returns the model, in eval mode."""
    model.eval()
    for module in model.modules():
        if isinstance(module, (ConvNormAct, LowFormerStem)) and isinstance(module.norm, nn.BatchNorm2d):
            module.conv, module.norm = fuse_conv_bn_eval(module.conv, module.norm), nn.Identity()
        elif isinstance(module, LowtentionMixer) and isinstance(module.down_norm, nn.BatchNorm2d):
            module.down, module.down_norm = fuse_conv_bn_eval(module.down, module.down_norm), nn.Identity()
        elif isinstance(module, LowFormerBlock) and module.mlp is not None and module.norm2.affine:
            _fold_norm_affine(module.norm2, module.mlp.fc1)
            module.norm2 = nn.GroupNorm(1, module.norm2.num_channels, eps=module.norm2.eps, affine=False)
    return model


def _fold_norm_affine(norm: nn.GroupNorm, conv: nn.Conv2d) -> None:
    """conv(gamma * n + beta) = (W * gamma) n + (W beta + b) for a 1x1 conv W."""
    weight = conv.weight[:, :, 0, 0]
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    conv.bias = nn.Parameter(bias + weight @ norm.bias)
    conv.weight.mul_(norm.weight.view(1, -1, 1, 1))


class FastLowFormer(nn.Module):
    """A folded LowFormer that runs channels-last for batches of ``batch_threshold`` and more and NCHW
    below (each measured the faster there). Outputs as the plain model's."""

    def __init__(self, model: LowFormer, batch_threshold: int = 4):
        super().__init__()
        folded = fold_lowformer(copy.deepcopy(model))
        self.batch_threshold = batch_threshold
        self.small = folded
        self.large = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        self.model_card = getattr(model, "model_card", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= self.batch_threshold:
            return self.large(x.contiguous(memory_format=torch.channels_last))
        return self.small(x)
