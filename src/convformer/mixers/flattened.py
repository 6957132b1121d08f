"""Run a sequence mixer (B, N, C) -> (B, N, C) inside an image stage of a MetaFormer.

The pose lifter's dynamic convolutional attention mixes a token sequence. An image stage holds a map
(B, H, W, C); flattening it row by row gives H*W tokens in raster order, which the sequence mixer sees
as any other sequence. Its spatial form convolves along that order (so a Q/K/V token also sees its left
and right neighbours, and across a row break the last pixel of the row above) and then attends over all
tokens, so like plain attention it works at any map size.
"""
import torch
from torch import nn


class FlattenedImageMixer(nn.Module):
    """(B, H, W, C) -> flatten to (B, H*W, C) -> ``mixer`` -> reshape back to (B, H, W, C)."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x.flatten(1, 2)).reshape(x.shape)
