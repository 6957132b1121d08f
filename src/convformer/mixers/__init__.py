"""Token mixers, one module per family, and ``MIXERS``: the registry of them by name.

Image mixers map channels-last feature maps (B, H, W, C) -> (B, H, W, C); sequence mixers (the pose
lifter's dynamic convolutional attention) map token sequences (B, N, C) -> (B, N, C). Every mixer takes
``dim`` first and ignores keyword arguments it does not use.
"""
from .attention import AttentionMixer
from .dynamic_conv_attention import DynamicConv1d, DynamicConvAttention
from .identity import IdentityMixer
from .lowtention import LowtentionMixer
from .pooling import PoolingMixer
from .random_mixing import RandomMixer
from .sepconv import SepConvMixer

MIXERS = {"identity": IdentityMixer, "pool": PoolingMixer, "random": RandomMixer, "sepconv": SepConvMixer,
          "attention": AttentionMixer, "dynamic_conv_attention": DynamicConvAttention, "lowtention": LowtentionMixer}

__all__ = ["MIXERS", "AttentionMixer", "DynamicConv1d", "DynamicConvAttention", "IdentityMixer", "LowtentionMixer", "PoolingMixer",
           "RandomMixer", "SepConvMixer"]
