"""Token mixers, one module per family, and ``MIXERS``: the registry of them by name.

Image mixers map channels-last feature maps (B, H, W, C) -> (B, H, W, C); sequence mixers (the pose
lifter's dynamic convolutional attention, named in ``SEQUENCE_MIXERS``) map token sequences (B, N, C) ->
(B, N, C) and run in an image stage through :class:`FlattenedImageMixer`. Every mixer takes ``dim``
first and ignores keyword arguments it does not use, so a model can pass every mixer the same context
(``stage_stride``, ``num_tokens``, ...).
"""
from convformer.mixers.attention import AttentionMixer
from convformer.mixers.convmod import ConvModMixer
from convformer.mixers.dynamic_conv_attention import DynamicConv1d, DynamicConvAttention
from convformer.mixers.flattened import FlattenedImageMixer
from convformer.mixers.identity import IdentityMixer
from convformer.mixers.lowtention import LowtentionMixer
from convformer.mixers.pooling import PoolingMixer
from convformer.mixers.random_mixing import RandomMixer
from convformer.mixers.sepconv import SepConvMixer

MIXERS = {"identity": IdentityMixer, "pool": PoolingMixer, "random": RandomMixer, "sepconv": SepConvMixer,
          "attention": AttentionMixer, "dynamic_conv_attention": DynamicConvAttention, "lowtention": LowtentionMixer,
          "convmod": ConvModMixer}
SEQUENCE_MIXERS = frozenset({"dynamic_conv_attention"})   # (B, N, C) mixers; the rest take (B, H, W, C)

__all__ = ["MIXERS", "SEQUENCE_MIXERS", "AttentionMixer", "ConvModMixer", "DynamicConv1d", "DynamicConvAttention",
           "FlattenedImageMixer", "IdentityMixer", "LowtentionMixer", "PoolingMixer", "RandomMixer", "SepConvMixer"]
