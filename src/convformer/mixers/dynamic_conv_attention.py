"""Dynamic multi-headed convolutional self-attention (Diaz-Arias & Shin, "ConvFormer: Parameter Reduction
in Transformer Models for 3D Human Pose Estimation by Leveraging Dynamic Multi-Headed Convolutional
Attention", arXiv 2304.02147).

Queries, keys and values are not linear projections of each token but 1-D convolutions, so each one
also sees its neighbours. For each of Q, K and V there are ``n`` parallel convolutions with different
kernel sizes whose outputs are mixed by learned weights ``eta`` (softmax-normalised, so they sum to one:
the "dynamic" part). Heads split the features, as in ordinary multi-head attention; the convolutions are
shared by all heads.

Two forms differ only in which axis is the convolution's channel axis:

* ``spatial``: tokens are joints, features are the embedding. The convolution has the features as its
  channels and slides along the joint axis (neighbouring joints in Human3.6M order feed each Q/K/V).
* ``temporal`` (the paper's "temporal joints profile"): tokens are frames, features are all joints'
  embeddings flattened. The convolution has the *frames* as its channels and slides along the feature
  axis, so every Q/K/V feature already mixes every frame over a neighbourhood of joint features.

The output projection is a pointwise (kernel 1) convolution over the same channel axis: a features ->
features linear map in the spatial form and a frames -> frames map in the temporal form. The paper does
not spell this out; it is the choice that reproduces its parameter counts (2.56 M at T = 9 and 10.24 M
at T = 243 need a T x T map per temporal block, see docs/pose.md).

Because a convolution is linear in its kernel, the weighted sum of ``n`` convolutions equals one
convolution with the weighted sum of their (centre-aligned, zero-padded) kernels. The forward pass uses
that: it builds one fused kernel for Q, K and V together and runs a single convolution, which is exact
and about ``3n`` times cheaper than running the ``3n`` convolutions; the parameters (and so the
parameter count and the gradients) are still the paper's ``n`` separate kernels per projection.
For inference, :meth:`DynamicConvAttention.fuse` computes that kernel once (``convformer.optimize``).

``linear=True`` replaces the convolutions by PoseFormer's plain linear Q/K/V and output projections
(over the features), for comparison.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convformer.errors import ConvformerError


class DynamicConv1d(nn.Module):
    """``n`` parallel same-padded Conv1d (C -> C, kernel k_i, with bias) mixed by softmax(eta)."""

    def __init__(self, channels: int, kernel_sizes=(7, 7, 7)):
        super().__init__()
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ConvformerError(f"kernel sizes must be odd and positive, got {tuple(kernel_sizes)}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, k, padding=k // 2) for k in self.kernel_sizes)
        self.eta = nn.Parameter(torch.zeros(len(self.kernel_sizes)))  # equal mixing at initialisation

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single (weight (C, C, k_max), bias (C,)) equal to the softmax-weighted sum of the convs."""
        w = torch.softmax(self.eta, 0)
        k_max = max(self.kernel_sizes)
        weight = sum(w[i] * F.pad(c.weight, ((k_max - k) // 2,) * 2)
                     for i, (c, k) in enumerate(zip(self.convs, self.kernel_sizes)))
        bias = sum(w[i] * c.bias for i, c in enumerate(self.convs))
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, C, L)
        weight, bias = self.fused()
        return F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2)


class DynamicConvAttention(nn.Module):
    """Multi-head self-attention over ``num_tokens`` tokens of ``dim`` features: (B, N, C) -> (B, N, C).

    ``form`` is "spatial" (convolve along the tokens; channels = features) or "temporal" (convolve along
    the features; channels = tokens). ``linear=True`` gives plain linear-projection attention instead.
    """

    def __init__(self, dim: int, num_tokens: int, form: str = "spatial", num_heads: int = 8,
                 kernel_sizes=(7, 7, 7), linear: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 **_):
        super().__init__()
        if form not in ("spatial", "temporal"):
            raise ConvformerError(f"form must be 'spatial' or 'temporal', got {form!r}")
        if dim % num_heads:
            raise ConvformerError(f"{dim} features cannot be split into {num_heads} heads")
        self.dim, self.num_tokens, self.form, self.num_heads, self.linear = dim, num_tokens, form, num_heads, linear
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        if linear:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
        else:
            channels = dim if form == "spatial" else num_tokens
            self.q, self.k, self.v = (DynamicConv1d(channels, kernel_sizes) for _ in range(3))
            self.proj = nn.Conv1d(channels, channels, 1)
        # set by fuse(): the Q/K/V kernel computed once for inference (not saved with the weights)
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)

    def fuse(self) -> "DynamicConvAttention":
        """Inference: compute the fused Q/K/V kernel once instead of in every forward. The parameters are
        unchanged (and must not be trained afterwards); ONNX export needs this (its kernels must be
        constants)."""
        if not self.linear:
            with torch.no_grad():
                weight, bias = self.qkv_weight()
            self.fused_weight, self.fused_bias = weight.clone(), bias.clone()
        return self

    def qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused Q, K and V kernels stacked along the output channels: ((3C, C, k), (3C,))."""
        parts = [m.fused() for m in (self.q, self.k, self.v)]
        k_max = max(p[0].shape[-1] for p in parts)
        weight = torch.cat([F.pad(w, ((k_max - w.shape[-1]) // 2,) * 2) for w, _ in parts])
        return weight, torch.cat([b for _, b in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if c != self.dim or (self.form == "temporal" and not self.linear and n != self.num_tokens):
            raise ConvformerError(f"{self.form} attention built for {self.num_tokens} tokens of {self.dim} "
                                  f"features got {n} tokens of {c}")
        heads, hd = self.num_heads, c // self.num_heads
        if self.linear:
            qkv = self.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        else:
            weight, bias = self.qkv_weight() if self.fused_weight is None else (self.fused_weight, self.fused_bias)
            if self.form == "spatial":   # channels = features, slide along tokens
                qkv = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] // 2)  # (B, 3C, N)
                qkv = qkv.reshape(b, 3, heads, hd, n).permute(1, 0, 2, 4, 3)
            else:                        # channels = tokens (frames), slide along features
                qkv = F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2)  # (B, 3N, C)
                qkv = qkv.reshape(b, 3, n, heads, hd).permute(1, 0, 3, 2, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, n, c)  # (B, N, C), heads concatenated along the features
        if self.linear:
            y = self.proj(y)
        elif self.form == "spatial":  # a kernel-1 conv over the features is a linear map of each token
            y = F.linear(y, self.proj.weight[..., 0], self.proj.bias)
        else:
            y = self.proj(y)
        return self.proj_drop(y)

    def extra_repr(self) -> str:
        kind = "linear" if self.linear else f"kernels={self.q.kernel_sizes}"
        return f"form={self.form}, dim={self.dim}, tokens={self.num_tokens}, heads={self.num_heads}, {kind}"
