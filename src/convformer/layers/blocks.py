"""Small shared parts: per-channel Scale, the channel MLP, stochastic depth, stem and downsampling.

Everything here works on channels-last (B, H, W, C) tensors (or (B, N, C) sequences): linear layers act
on the last dimension, and convolutions see a ``permute(0, 3, 1, 2)`` view, which is a channels_last
NCHW tensor, so no copy is made.
"""
from typing import Callable, Optional

import torch
from torch import nn


class Scale(nn.Module):
    """Multiply by a learnable per-channel vector (layer scale / residual scale)."""

    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Mlp(nn.Module):
    """Channel MLP: Linear(D -> ratio*D) -> activation -> dropout -> Linear(ratio*D -> D) -> dropout."""

    def __init__(self, dim: int, ratio: float = 4.0, act: Callable[[], nn.Module] = nn.GELU,
                 bias: bool = False, drop: float = 0.0):
        super().__init__()
        hidden = int(ratio * dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Stem(nn.Module):
    """Patch embedding: Conv(k7, s4, p2) on the NCHW image, then an optional norm in (B, H, W, C)."""

    def __init__(self, in_chans: int, dim: int, norm: Optional[Callable[[int], nn.Module]] = None):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=2)
        self.norm = norm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Between stages: optional pre-norm, then Conv(k3, s2, p1); (B, H, W, C) in and out."""

    def __init__(self, in_dim: int, out_dim: int, norm: Optional[Callable[[int], nn.Module]] = None):
        super().__init__()
        self.norm = norm(in_dim) if norm else nn.Identity()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        return self.conv(x).permute(0, 2, 3, 1)
