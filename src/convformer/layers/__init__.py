"""Shared building blocks (norms, activations, scales, MLP, stochastic depth, stems)."""
from convformer.layers.activations import SquaredReLU, StarReLU
from convformer.layers.blocks import Downsample, DropPath, Mlp, Scale, Stem
from convformer.layers.norms import ChannelLayerNorm, SpatialChannelNorm

__all__ = ["SquaredReLU", "StarReLU", "Downsample", "DropPath", "Mlp", "Scale", "Stem",
           "ChannelLayerNorm", "SpatialChannelNorm"]
