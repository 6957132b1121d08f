"""Shared building blocks (norms, activations, scales, MLP, stochastic depth, stems)."""
from .activations import SquaredReLU, StarReLU
from .blocks import Downsample, DropPath, Mlp, Scale, Stem
from .norms import ChannelLayerNorm, SpatialChannelNorm

__all__ = ["SquaredReLU", "StarReLU", "Downsample", "DropPath", "Mlp", "Scale", "Stem",
           "ChannelLayerNorm", "SpatialChannelNorm"]
