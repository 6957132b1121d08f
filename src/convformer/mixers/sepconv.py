"""Separable-convolution token mixer of ConvFormer (Yu et al., MetaFormer Baselines).

The MobileNetV2 inverted separable conv: pointwise expand (x2, no bias) -> StarReLU -> depthwise 7x7
-> pointwise project. Pointwise convs are ``nn.Linear`` on channels-last activations.
"""
import torch
from torch import nn

from convformer.layers.activations import StarReLU


class SepConvMixer(nn.Module):
    def __init__(self, dim: int, expansion: float = 2.0, kernel_size: int = 7, bias: bool = False, **_):
        super().__init__()
        hidden = int(expansion * dim)
        self.pwconv1 = nn.Linear(dim, hidden, bias=bias)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden,
                                bias=bias)
        self.pwconv2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(x)
