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


def normalize_hwc(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero-mean, unit-variance over (H, W, C) of each sample of a (B, H, W, C) tensor, no affine.

    During ONNX export the same statistics are computed by group_norm with one group on the NCHW
    view, because the legacy exporter cannot take a normalised shape read from the input's shape."""
    if not torch.jit.is_scripting():  # TorchScript cannot compile the ONNX-export query
        if torch.onnx.is_in_onnx_export():
            return F.group_norm(x.permute(0, 3, 1, 2), 1, eps=eps).permute(0, 2, 3, 1)
    return F.layer_norm(x, x.shape[-3:], eps=eps)


class SpatialChannelNorm(nn.Module):
    """Normalise each sample over (H, W, C) together, then scale (and shift) per channel."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize_hwc(x, self.eps) * self.weight
        return x if self.bias is None else x + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, bias={self.bias is not None}"
