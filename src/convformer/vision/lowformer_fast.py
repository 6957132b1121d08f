"""LowFormer's inference fast path (``convformer.optimize`` on a LowFormer).

Folding, all exact up to float rounding:

* every BatchNorm into the convolution before it (stem, fused and plain MBConv, Lowtention's
  downsampling conv, the head's 1x1 conv), with ``torch.nn.utils.fusion.fuse_conv_bn_eval``;
* the MLP's GroupNorm affine (per-channel scale and shift) into the MLP's first 1x1 conv, whose input
  it is, so the norm only normalises. The pre-norm of the attention branch stays: its shift would
  meet the zero padding of the depthwise conv after it, which a fold cannot reproduce at the borders.

Then two rewrites of layers PyTorch runs on slow generic kernels at small sizes (the batch-1 profile
showed them on ``slow_conv2d`` / ``slow_conv_transpose2d`` instead of oneDNN):

* Lowtention's stride-1 transposed 3x3 conv (at 1/32) as the ordinary 3x3 conv it equals (kernel
  transposed in its channel axes and flipped, padding 1);
* in the NCHW copy, every 1x1 conv as one matrix product over the H*W columns (``PointwiseConv``).

The weights then go to channels-last memory, where oneDNN's convolutions are fastest for batches;
inputs in NCHW are accepted (PyTorch converts them at the first conv). At batch 1 the channels-last
convolutions measured slower, so ``FastLowFormer`` keeps a second, NCHW copy of the folded network
for batches below ``batch_threshold`` (the weights of a LowFormer are small: 14-57 M parameters).
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from convformer.mixers.lowtention import LowtentionMixer
from convformer.vision.lowformer import ConvNormAct, LowFormer, LowFormerBlock, LowFormerStem


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
        if isinstance(module, LowtentionMixer) and _is_plain_transposed_3x3(module.up):
            module.up = _as_conv(module.up)
    return model


def _is_plain_transposed_3x3(up: nn.Module) -> bool:
    return isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (3, 3) and up.stride == (1, 1) \
        and up.padding == (1, 1) and up.groups == 1 and up.output_padding == (0, 0)


def _as_conv(up: nn.ConvTranspose2d) -> nn.Conv2d:
    """A stride-1 transposed conv is a conv with the kernel's channel axes swapped and its taps flipped."""
    conv = nn.Conv2d(up.in_channels, up.out_channels, 3, padding=1, bias=up.bias is not None)
    conv.weight.copy_(up.weight.transpose(0, 1).flip(2, 3))
    if up.bias is not None:
        conv.bias.copy_(up.bias)
    return conv


class PointwiseConv(nn.Module):
    """A 1x1 conv on NCHW input as a matrix product: (out, in) @ (in, H*W) per image."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if b == 1:
            cols = x.reshape(c, h * w)
            y = self.weight @ cols if self.bias is None else torch.addmm(self.bias[:, None], self.weight, cols)
            return y.view(1, -1, h, w)
        y = torch.matmul(self.weight, x.reshape(b, c, h * w))
        if self.bias is not None:
            y += self.bias[:, None]
        return y.view(b, -1, h, w)


def _pointwise_as_matmul(model: nn.Module) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.stride == (1, 1) \
                    and child.groups == 1 and child.padding == (0, 0):
                setattr(parent, name, PointwiseConv(child))


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
        self.large = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        _pointwise_as_matmul(folded)
        self.small = folded
        self.model_card = getattr(model, "model_card", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= self.batch_threshold:
            return self.large(x.contiguous(memory_format=torch.channels_last))
        return self.small(x)
