"""A MetaFormer rebuilt for ONNX Runtime's CPU provider: ``export_onnx(model, ..., target="onnxruntime")``.

ONNX Runtime runs convolutions in a blocked layout (NCHWc: channels in blocks of 8 on AVX2, 16 on
AVX-512). Its graph optimizer rewrites Conv, pooling, same-shape Add/Mul, Relu and BatchNormalization
into that layout and inserts a reorder wherever any other op touches the tensor. A channels-last
PyTorch export (Linear = MatMul over the last dim, depthwise conv wrapped in transposes, LayerNormalization
over the last dim) therefore costs a reorder pair around every depthwise conv and every norm.

This module describes the same network in NCHW with only ops that stay blocked:

* pointwise layers are 1x1 convolutions, with every per-channel affine op folded in as
  ``vision/fold.py`` does for the eager path (norm weights, StarReLU's scale and bias, layer scales);
* ReLU is fused into the convolution before it, and the square is ``Mul(h, h)``;
* the channel LayerNorm is computed exactly (two passes: the mean is subtracted before the variance is
  taken, so inputs whose mean dwarfs their spread keep their digits) from a 1x1 conv to one channel
  (minus the mean), a 1x1 conv back to all channels fused with the residual add (the centred tensor),
  ``Mul`` (its square), a 1x1 conv to one channel (the variance plus eps), ``var ** -0.5``
  on that single channel, and a broadcast back by 1x1 conv. Only one-channel tensors leave the layout;
* per-channel scales on the residual stream (residual scales, a stem norm's weight) are depthwise 1x1
  convolutions, and residual adds fuse into the convolution that produces the branch.

Attention (CAFormer's last stages) leaves the layout for its matrix products, on tensors of 14x14 and
7x7 tokens; blocks with other mixers (IdentityFormer/RandFormer/PoolFormer norms over (C, H, W), mixed
MetaFormers' Lowtention, ...) run as their folded channels-last form between two transposes. Outputs
equal the plain model's within float rounding; ``export_onnx`` checks that before writing the file.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from convformer.mixers import AttentionMixer, SepConvMixer
from convformer.vision.fold import FoldedBlock, ShiftedSquaredReLU, _relu_squared, fold_metaformer
from convformer.vision.metaformer import MetaFormer


def _pointwise(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Linear's weight as a 1x1 conv kernel (out, in, 1, 1), and its bias."""
    w = linear.weight.detach().clone()[:, :, None, None]
    return w, (linear.bias.detach().clone() if linear.bias is not None else None)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, no affine, from ops that keep ORT's blocked layout."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.register_buffer("neg_mean", torch.full((1, channels, 1, 1), -1.0 / channels))
        self.register_buffer("mean_of", torch.full((1, channels, 1, 1), 1.0 / channels))
        self.register_buffer("eps", torch.tensor([float(eps)]))
        self.register_buffer("spread", torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = F.conv2d(F.conv2d(x, self.neg_mean), self.spread) + x
        var = F.conv2d(centred * centred, self.mean_of, self.eps)
        return centred * F.conv2d(torch.pow(var, -0.5), self.spread)  # Pow: one node, not Sqrt + Reciprocal


class ChannelScale(nn.Module):
    """x * w + b per channel, as a depthwise 1x1 conv (ORT keeps it in the blocked layout)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone().reshape(-1, 1, 1, 1))
        self.register_buffer("bias", None if bias is None else bias.detach().clone().reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, groups=self.weight.shape[0])


class _Residual(nn.Module):
    """The skip path of a residual add: identity, or a per-channel residual scale."""

    def __init__(self, res_scale):
        super().__init__()
        self.scale = ChannelScale(res_scale) if res_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.scale is None else self.scale(x)


class _Conv1x1(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        w, b = _pointwise(linear)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class NchwMlp(nn.Module):
    """norm -> 1x1 conv + ReLU -> square -> 1x1 conv, added to the (scaled) input."""

    def __init__(self, block: FoldedBlock, dim: int):
        super().__init__()
        self.norm = ChannelNorm(dim, block.norm2.eps)
        self.fc1, self.fc2 = _Conv1x1(block.fc1), _Conv1x1(block.fc2)
        self.skip = _Residual(block.res_scale2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(self.norm(x)))
        return self.fc2(h * h) + self.skip(x)


class NchwSepConv(nn.Module):
    """norm -> 1x1 conv + ReLU -> square (+ StarReLU's shifted bias) -> depthwise conv -> 1x1 conv."""

    def __init__(self, block: FoldedBlock, dim: int):
        super().__init__()
        mixer = block.token_mixer
        self.norm = ChannelNorm(dim, block.norm1.eps)
        self.pw1, self.pw2 = _Conv1x1(mixer.pwconv1), _Conv1x1(mixer.pwconv2)
        hidden = mixer.pwconv1.out_features
        # StarReLU's bias, after its scale moved into the depthwise conv. It is kept even when it is zero
        # (a fresh init), so the graph, and its speed, is the one a trained model gets.
        self.shift = ChannelScale(torch.ones(hidden), torch.full((hidden,), mixer.act1.shift))
        self.dw = copy.deepcopy(mixer.dwconv)
        self.skip = _Residual(block.res_scale1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.pw1(self.norm(x)))
        return self.pw2(self.dw(self.shift(h * h))) + self.skip(x)


class NchwAttention(nn.Module):
    """norm -> qkv 1x1 conv -> softmax attention over the H*W tokens -> 1x1 conv projection."""

    def __init__(self, block: FoldedBlock, dim: int):
        super().__init__()
        mixer: AttentionMixer = block.token_mixer
        self.norm = ChannelNorm(dim, block.norm1.eps)
        self.qkv, self.proj = _Conv1x1(mixer.qkv), _Conv1x1(mixer.proj)
        self.heads, self.head_dim = mixer.num_heads, mixer.head_dim
        self.skip = _Residual(block.res_scale1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])  # constants in a graph export, like the weights
        # -1 for the batch: a constant shape, so that ONNX shape inference keeps the batch dimension's
        # name and ONNX Runtime can prove the blocks' Mul inputs equal in shape (else it reorders them)
        qkv = self.qkv(self.norm(x)).reshape(-1, 3, self.heads, self.head_dim, h * w)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]            # (B, heads, head_dim, N)
        scores = torch.matmul(q.transpose(-1, -2), k) * (self.head_dim ** -0.5)   # (B, heads, Nq, Nk)
        attn = torch.softmax(scores, dim=-1)
        y = torch.matmul(v, attn.transpose(-1, -2))         # (B, heads, head_dim, Nq)
        return self.proj(y.reshape(-1, self.heads * self.head_dim, h, w)) + self.skip(x)


class ChannelsLastBlock(nn.Module):
    """Any other block, run in its own channels-last form between two transposes."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _nchw_block(block: nn.Module, dim: int) -> list[nn.Module]:
    if not isinstance(block, FoldedBlock) or block.norm1.dims != 1 or block.norm2.dims != 1 \
            or block.act is not _relu_squared:
        return [ChannelsLastBlock(block)]
    mixer = block.token_mixer
    if isinstance(mixer, SepConvMixer) and isinstance(mixer.act1, ShiftedSquaredReLU):
        first = NchwSepConv(block, dim)
    elif isinstance(mixer, AttentionMixer):
        first = NchwAttention(block, dim)
    else:
        return [ChannelsLastBlock(block)]
    return [first, NchwMlp(block, dim)]


class NchwNorm(nn.Module):
    """A stem/downsampling ChannelLayerNorm: ChannelNorm, then its weight (and bias) per channel."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = ChannelNorm(norm.weight.numel(), norm.eps)
        self.affine = ChannelScale(norm.weight, norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(self.norm(x))


class NchwDownsample(nn.Module):
    """Pre-norm then strided conv, with the norm's weight folded into the conv's input channels."""

    def __init__(self, down: nn.Module):
        super().__init__()
        conv = copy.deepcopy(down.conv)
        norm = down.norm
        if isinstance(norm, nn.LayerNorm):
            with torch.no_grad():
                if norm.bias is not None:  # conv(w x + b) = conv'(x) + sum over the kernel of W b
                    shift = (conv.weight * norm.bias[None, :, None, None]).sum((1, 2, 3))
                    conv.bias = nn.Parameter(shift if conv.bias is None else conv.bias + shift)
                conv.weight.mul_(norm.weight[None, :, None, None])
            self.norm = ChannelNorm(norm.weight.numel(), norm.eps)
        else:
            self.norm = nn.Identity()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class OrtMetaFormer(nn.Module):
    """The export form of a MetaFormer classifier for ONNX Runtime (see the module doc)."""

    reshapes_keep_batch = True  # export_onnx may write its -1 batch sizes as 0 (see keep_batch_in_reshapes)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """A MetaFormer classifier (or headless one); features-only models return a list of maps instead."""
        return type(model) is MetaFormer

    def __init__(self, model: MetaFormer):
        super().__init__()
        folded = fold_metaformer(copy.deepcopy(model).eval())
        stem = folded.stem
        self.stem_conv = stem.conv
        self.stem_norm = NchwNorm(stem.norm) if isinstance(stem.norm, nn.LayerNorm) else nn.Identity()
        layers: list[nn.Module] = []
        for i, stage in enumerate(folded.stages):
            if not isinstance(stage.downsample, nn.Identity):
                layers.append(NchwDownsample(stage.downsample))
            dim = folded.cfg.dims[i]
            for block in stage.blocks:
                layers += _nchw_block(block, dim)
        self.layers = nn.Sequential(*layers)
        self.head = folded.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem_norm(self.stem_conv(x)))
        return self.head(x)
