"""Pooling token mixer of PoolFormer (Yu et al., "MetaFormer Is Actually What You Need for Vision")."""
import torch
from torch import nn
import torch.nn.functional as F


class PoolingMixer(nn.Module):
    """avg_pool(x) - x over a k x k window (stride 1, padding not counted); the block's residual adds x
    back, so subtracting it here makes the mixer a pure neighbourhood difference."""

    def __init__(self, dim: int, pool_size: int = 3, **_):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nchw = x.permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(nchw, self.pool_size, stride=1, padding=self.pool_size // 2,
                              count_include_pad=False)
        return pooled.permute(0, 2, 3, 1) - x
