"""Identity token mixing: IdentityFormer (Yu et al., MetaFormer Baselines) mixes no tokens at all."""
import torch
from torch import nn


class IdentityMixer(nn.Module):
    """Returns its input; the block is then norm + channel MLP only."""

    def __init__(self, dim: int, **_):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
