"""Activations of the MetaFormer baselines (Yu et al., 2022).

StarReLU, ``s * relu(x)**2 + b``, keeps the cheapness of ReLU while its learnable scalar scale and bias
undo the distribution shift of the squared ReLU; SquaredReLU is the plain square used in the MLP head.
"""
import torch
from torch import nn
import torch.nn.functional as F


class SquaredReLU(nn.Module):
    """relu(x) ** 2 (So et al., Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


class StarReLU(nn.Module):
    """s * relu(x) ** 2 + b with learnable scalars s (init 1) and b (init 0), one pair per instance."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0, learnable: bool = True):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), float(bias)), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.square(F.relu(x)) + self.bias
