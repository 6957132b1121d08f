"""Norms for channels-last (B, H, W, C) activations.

Two kinds appear in the MetaFormer family:
* ``ChannelLayerNorm``: normalise over C at each position (ConvFormer/CAFormer blocks, stem, downsampling).
* ``SpatialChannelNorm``: normalise over (H, W, C) jointly, i.e. GroupNorm with a single group, with a
  per-channel weight (IdentityFormer, RandFormer, PoolFormerV2; PoolFormer v1 also has a bias).
Both are plain ``F.layer_norm`` calls over trailing dimensions, which is why the stages keep C last.
"""
import torch
from torch import nn
import torch.nn.functional as F


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the last (channel) dimension; the baselines use it without bias, eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=True, bias=bias)


class SpatialChannelNorm(nn.Module):
    """Normalise each sample over (H, W, C) together, then scale (and shift) per channel."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[-3:], eps=self.eps)
        x = x * self.weight
        return x if self.bias is None else x + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, bias={self.bias is not None}"
