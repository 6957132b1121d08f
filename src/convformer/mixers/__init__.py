"""Token mixers, one module per family, and ``MIXERS``: the registry of them by name.

Image mixers map channels-last feature maps (B, H, W, C) -> (B, H, W, C); sequence mixers (the pose
lifter's dynamic convolutional attention, named in ``SEQUENCE_MIXERS``) map token sequences (B, N, C) ->
(B, N, C) and run in an image stage through :class:`FlattenedImageMixer`. Every mixer takes ``dim``
first and ignores keyword arguments it does not use, so a model can pass every mixer the same context
(``stage_stride``, ``num_tokens``, ...).
"""
from .attention import AttentionMixer
from .convmod import ConvModMixer
from .dynamic_conv_attention import DynamicConv1d, DynamicConvAttention
from .flattened import FlattenedImageMixer
from .identity import IdentityMixer
from .lowtention import LowtentionMixer
from .pooling import PoolingMixer
from .random_mixing import RandomMixer
from .sepconv import SepConvMixer

MIXERS = {"identity": IdentityMixer, "pool": PoolingMixer, "random": RandomMixer, "sepconv": SepConvMixer,
          "attention": AttentionMixer, "dynamic_conv_attention": DynamicConvAttention, "lowtention": LowtentionMixer,
          "convmod": ConvModMixer}
SEQUENCE_MIXERS = frozenset({"dynamic_conv_attention"})   # (B, N, C) mixers; the rest take (B, H, W, C)

__all__ = ["MIXERS", "SEQUENCE_MIXERS", "AttentionMixer", "ConvModMixer", "DynamicConv1d", "DynamicConvAttention",
           "FlattenedImageMixer", "IdentityMixer", "LowtentionMixer", "PoolingMixer", "RandomMixer", "SepConvMixer"]
