"""Lowtention, the token mixer of LowFormer (Nottebaum et al., "LowFormer: Hardware Efficient Design for
Convolutional Transformer Backbones", WACV 2025; code altair199797/LowFormer).

Self-attention made cheap by running it on a smaller, thinner map:

1. a depthwise convolution with BatchNorm shrinks the map (5x5 stride 2 at 1/16 resolution, 3x3 stride 1
   at 1/32), so the attention sees a quarter of the tokens where they are many;
2. a 1x1 convolution makes Q, K and V at half the channels (heads of mostly 32 channels);
3. softmax attention over the small map's tokens;
4. one transposed convolution both projects the heads back to the full width and upsamples to the input
   size (``fuse_out_proj=True``, as in every released model). The unfused form, a 1x1 output projection
   then a depthwise transposed convolution, is the paper's ablation and is kept for loading its weights.

The transposed convolution can overshoot an odd input side by one; the output is cropped to the input.
``forward`` takes channels-last (B, H, W, C) like every image mixer; ``forward_nchw`` is the same on
(B, C, H, W), which LowFormer's convolutional blocks use.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def lowtention_heads(dim: int, head_dim_ratio: float = 0.5) -> tuple[int, int]:
    """(number of heads, head width) for a ``dim``-channel input: about one head per 30 channels of the
    reduced width ``dim * head_dim_ratio``, each ``head_dim_ratio`` of its share of ``dim`` (the rule of
    the authors' code, which gives 32-channel heads for widths 128/256/320/512)."""
    heads = max(1, int(dim * head_dim_ratio) // 30)
    return heads, int((dim // heads) * head_dim_ratio)


class LowtentionMixer(nn.Module):
    def __init__(self, dim: int, att_stride: Optional[int] = None, kernel_size: Optional[int] = None,
                 head_dim_ratio: float = 0.5, fuse_out_proj: bool = True, stage_stride: Optional[int] = None, **_):
        """``att_stride``: the downsampling of the attention map; by default 2 in stages at 1/16
        resolution or finer (``stage_stride`` <= 16, as a MetaFormer passes it) and 1 at 1/32, as in
        LowFormer. ``kernel_size`` defaults to 5 with a stride and 3 without."""
        super().__init__()
        if att_stride is None:
            att_stride = 2 if stage_stride is not None and stage_stride <= 16 else 1
        kernel_size = kernel_size or (5 if att_stride > 1 else 3)
        self.att_stride = att_stride
        self.num_heads, self.head_dim = lowtention_heads(dim, head_dim_ratio)
        inner = self.num_heads * self.head_dim
        self.down = nn.Conv2d(dim, dim, kernel_size, att_stride, kernel_size // 2, groups=dim, bias=False)
        self.down_norm = nn.BatchNorm2d(dim)
        self.qkv = nn.Conv2d(dim, 3 * inner, 1, bias=False)
        # transposed conv that restores the size: kernel 2s, stride s, padding s/2 doubles (s=2) a side;
        # at s=1 a 3x3 with padding 1 keeps it
        k, p = (2 * att_stride, att_stride // 2) if att_stride > 1 else (3, 1)
        if fuse_out_proj:
            self.proj = nn.Identity()
            self.up = nn.ConvTranspose2d(inner, dim, k, att_stride, p)
        else:
            self.proj = nn.Conv2d(inner, dim, 1)
            self.up = nn.ConvTranspose2d(dim, dim, k, att_stride, p, groups=dim)

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        y = self.qkv(self.down_norm(self.down(x)))
        b, _, h, w = y.shape
        # channels are (head, [q | k | v], head_dim): per head, tokens x 3*head_dim
        qkv = y.reshape(b, self.num_heads, 3 * self.head_dim, h * w).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)            # (B, heads, tokens, head_dim)
        out = out.transpose(-1, -2).reshape(b, self.num_heads * self.head_dim, h, w)
        out = self.up(self.proj(out))
        return out[:, :, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
