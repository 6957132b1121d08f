"""The two halves of a CFSR block (Wu et al., "Transforming Image Super-Resolution: A ConvFormer-based
Efficient Approach", IEEE TIP 2024), on channels-last (B, H, W, C) activations.

* :class:`ConvModMixer`, the large-kernel token mixer: a = DW9x9(GELU(Linear(x))), v = Linear(x),
  out = Linear(a * v). The product of a large-kernel response with a pointwise "value" gives an
  attention-like modulation at convolution cost.
* :class:`EdgeFFN`, the edge-preserving channel MLP: h = GELU(Linear(x)); h = h + GELU(DW3x3(h) + edge(h));
  out = Linear(h), where edge(h) is three fixed-mask depthwise filters (Sobel x, Sobel y, Laplacian), each
  multiplied by a learnable per-channel scale and shifted by a learnable bias. Because all four filters
  are 3x3 depthwise convolutions of the same input, they add up to one: :meth:`EdgeFFN.merge` folds the
  edge branches into the 3x3 kernel for inference (the released checkpoints are in that merged form).

The masks are the ones in the authors' code, which differ from the textbook Sobel-x and Laplacian
kernels in one position each (a 1 at the top centre instead of the top-left corner and vice versa).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (row, col) -> value, exactly as the official implementation builds them
_MASKS = {
    "sobel_x": {(0, 1): 1.0, (1, 0): 2.0, (2, 0): 1.0, (0, 2): -1.0, (1, 2): -2.0, (2, 2): -1.0},
    "sobel_y": {(0, 0): 1.0, (0, 1): 2.0, (0, 2): 1.0, (2, 0): -1.0, (2, 1): -2.0, (2, 2): -1.0},
    "laplacian": {(0, 0): 1.0, (1, 0): 1.0, (1, 2): 1.0, (2, 1): 1.0, (1, 1): -4.0},
}
EDGE_BRANCHES = tuple(_MASKS)


def edge_mask(kind: str) -> torch.Tensor:
    mask = torch.zeros(3, 3)
    for (r, c), v in _MASKS[kind].items():
        mask[r, c] = v
    return mask


def _dw(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Depthwise conv of a (B, H, W, C) tensor through its channels-last NCHW view."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvModMixer(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 9, **_):
        super().__init__()
        self.a_proj = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.a_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _dw(self.a_dw, self.act(self.a_proj(x)))
        return self.proj(a * self.v(x))


class EdgeFFN(nn.Module):
    """Edge-preserving FFN; ``merged=False`` keeps the three edge branches as separate parameters."""

    def __init__(self, dim: int, ratio: float = 2.0, merged: bool = False):
        super().__init__()
        hidden = int(dim * ratio)
        self.hidden = hidden
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.merged = merged
        if not merged:
            for kind in EDGE_BRANCHES:  # small random init, as the paper's code does
                self.register_parameter(f"{kind}_scale", nn.Parameter(1e-3 * torch.randn(hidden)))
                self.register_parameter(f"{kind}_bias", nn.Parameter(1e-3 * torch.randn(hidden)))
                self.register_buffer(f"{kind}_mask", edge_mask(kind), persistent=False)

    def edge_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum of the three edge branches as one depthwise kernel (hidden, 1, 3, 3) and bias."""
        weight = sum(getattr(self, f"{k}_scale")[:, None, None, None] * getattr(self, f"{k}_mask")
                     for k in EDGE_BRANCHES)
        bias = sum(getattr(self, f"{k}_bias") for k in EDGE_BRANCHES)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if self.merged:
            out = _dw(self.dw, h)
        else:  # one conv with the summed kernel: the same function as four branches, with the same gradients
            weight, bias = self.edge_kernel()
            out = F.conv2d(h.permute(0, 3, 1, 2), self.dw.weight + weight, self.dw.bias + bias, padding=1,
                           groups=self.hidden).permute(0, 2, 3, 1)
        return self.fc2(h + self.act(out))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the edge branches into the 3x3 depthwise conv (inference form); idempotent."""
        if self.merged:
            return
        weight, bias = self.edge_kernel()
        self.dw.weight.add_(weight)
        self.dw.bias.add_(bias)
        for kind in EDGE_BRANCHES:
            delattr(self, f"{kind}_scale")
            delattr(self, f"{kind}_bias")
            delattr(self, f"{kind}_mask")
        self.merged = True
