"""Token mixers, one module per family. Each maps (B, H, W, C) -> (B, H, W, C) and takes ``dim``."""
from .attention import AttentionMixer
from .identity import IdentityMixer
from .pooling import PoolingMixer
from .random_mixing import RandomMixer
from .sepconv import SepConvMixer

__all__ = ["AttentionMixer", "IdentityMixer", "PoolingMixer", "RandomMixer", "SepConvMixer"]
