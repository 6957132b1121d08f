"""Inference-time folding of MetaFormer blocks (the "fast path" of ``convformer.optimize``).

At inference every per-channel affine op that sits next to a linear layer can be absorbed into it:
* a norm's weight (and bias) into the next linear (``W diag(w)``, bias ``W b``); for the identity,
  pooling and random mixers, which commute with per-channel scaling, into one scale after the mixer;
* StarReLU's scale into the next layer's weight and its bias into that layer's bias
  (``W (s r + b) = (s W) r + b W 1``); in the separable conv, where the next layer is a zero-padded
  depthwise conv, only the scale is folded and the bias stays as ``relu(x)^2 + b/s``;
* layer scales into the rows of the branch's last linear; residual scales into one fused
  multiply-add (``torch.addcmul``).
What is left per block is: norm (no affine), the mixer, one fused residual op, norm, Linear, relu^2,
Linear, one fused residual op. Outputs equal the unfolded model up to float rounding.

On a CPU the remaining elementwise work (relu^2 over the 4x-wide MLP activations, the norms, the
residual adds) is bound by memory traffic, not arithmetic. So in eager inference the MLP half of each
block (and the pointwise parts of the separable-conv mixer) runs over the rows (pixels) in chunks small
enough that the wide hidden activations stay in the CPU cache: norm -> Linear -> relu^2 in place ->
Linear with the residual accumulated straight into the output (for the MLP half, in place into the
tensor the mixer half just produced, which belongs to the block). Rows are independent, so the result is
the same; under autograd, tracing (ONNX export) or ``torch.compile`` the plain whole-tensor form is used.

Inside the chunks the per-pixel LayerNorm is computed from a row sum, a subtraction, a row norm and a
scale instead of ``F.layer_norm``: on short rows (C = 64..512) torch's layer_norm kernel costs two to
three times as much (measured per 2 MB chunk). It is the same two-pass formula, so it is as exact.
(Folding the mean into column-centred weights and using E[x^2] - mean^2 would save one more pass but
loses digits on rows whose mean dwarfs their spread; measured no faster, so not used.)

``quantize_linears_int8`` (``optimize(dtype="int8")``) swaps the stages' Linear layers for int8 dynamic
quantized ones; the chunked path calls such layers as modules instead of handing their weights to addmm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convformer.layers import Scale, SpatialChannelNorm, StarReLU
from convformer.layers.folding import fold_input_affine as _fold_input_affine
from convformer.layers.folding import fold_output_scale as _fold_output_scale
from convformer.layers.folding import quantize_linears_int8  # noqa: F401  (its home before 0.2)
from convformer.layers.norms import normalize_hwc
from convformer.mixers import AttentionMixer, IdentityMixer, PoolingMixer, RandomMixer, SepConvMixer
from convformer.vision.metaformer import MetaFormer, MetaFormerBlock


#: Target size in bytes of one chunk of hidden activations (tests lower it to force many chunks).
CHUNK_BYTES = 2 ** 21


def chunk_rows(hidden: int) -> int:
    """Rows per chunk so that a (rows, hidden) float32 block is about CHUNK_BYTES."""
    return max(64, CHUNK_BYTES // (4 * hidden))


def _eager_inference(x: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and not torch.jit.is_tracing() \
        and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export() and x.is_contiguous()


def _layer_norm_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim without affine, from cheap kernels (see module doc)."""
    c = x.shape[-1]
    centred = x - x.sum(-1, keepdim=True).div_(c)
    inv_std = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_().div_(c).add_(eps).rsqrt_()
    return centred.mul_(inv_std)


def _square_relu_(h: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    h.relu_()
    h.mul_(h)
    return h.add_(shift) if shift != 0.0 else h


def _residual_into(out: torch.Tensor, branch_in: torch.Tensor, linear: nn.Module, skip: torch.Tensor,
                   res_scale) -> None:
    """out = skip * res_scale + linear(branch_in), written into ``out``."""
    skip = skip if res_scale is None else skip * res_scale
    if not isinstance(linear, nn.Linear):  # int8 dynamic-quantized layer: no float weight to hand to addmm
        torch.add(linear(branch_in), skip, out=out)
        return
    torch.addmm(skip, branch_in, linear.weight.t(), out=out)  # the residual enters as the GEMM's beta term
    if linear.bias is not None:
        out.add_(linear.bias)


def _residual_add_(skip: torch.Tensor, branch_in: torch.Tensor, linear: nn.Module, res_scale) -> None:
    """skip = skip * res_scale + linear(branch_in), in place."""
    if res_scale is not None:
        skip.mul_(res_scale)
    if not isinstance(linear, nn.Linear):
        skip.add_(linear(branch_in))
        return
    skip.addmm_(branch_in, linear.weight.t())
    if linear.bias is not None:
        skip.add_(linear.bias)


def _linear_into(out: torch.Tensor, x: torch.Tensor, linear: nn.Module) -> None:
    """out = linear(x), the float GEMM writing straight into ``out``."""
    if not isinstance(linear, nn.Linear):
        out.copy_(linear(x))
    elif linear.bias is None:
        torch.mm(x, linear.weight.t(), out=out)
    else:
        torch.addmm(linear.bias, x, linear.weight.t(), out=out)


class ShiftedSquaredReLU(nn.Module):
    """relu(x)^2 + shift: StarReLU after its scale moved into the next layer."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.square(F.relu(x))
        return y + self.shift if self.shift != 0.0 else y


class PlainNorm(nn.Module):
    """The normalisation of a ChannelLayerNorm / SpatialChannelNorm without its affine part."""

    def __init__(self, eps: float, dims: int, channels: int):
        super().__init__()
        self.eps, self.dims, self.channels = eps, dims, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            return normalize_hwc(x, self.eps)
        return F.layer_norm(x, (self.channels,), eps=self.eps)


def _norm_affine(norm: nn.Module, dim: int):
    weight = norm.weight.detach().clone()
    bias = norm.bias.detach().clone() if norm.bias is not None else torch.zeros(dim)
    dims = 3 if isinstance(norm, SpatialChannelNorm) else 1
    return weight, bias, PlainNorm(norm.eps, dims, dim)


def _scale_vector(module: nn.Module, dim: int) -> torch.Tensor:
    return module.scale.detach().clone() if isinstance(module, Scale) else torch.ones(dim)


def _fold_starrelu_into(linear: nn.Linear, act: StarReLU) -> None:
    """linear(s * r + b) == linear'(r) with W' = s W and bias' = bias + b * W.sum(1)."""
    s, b = float(act.scale), float(act.bias)
    with torch.no_grad():
        shift = b * linear.weight.sum(1)
        linear.weight.mul_(s)
        linear.bias = nn.Parameter(shift if linear.bias is None else linear.bias + shift)


#: mixers whose block ``FoldedBlock`` folds: the ones it fuses into (sepconv, attention) and the ones
#: that commute with a per-channel scale (identity, pooling, random mixing)
FOLDABLE_MIXERS = (SepConvMixer, AttentionMixer, IdentityMixer, PoolingMixer, RandomMixer)


class FoldedBlock(nn.Module):
    """A MetaFormerBlock with its affine ops folded away (inference only)."""

    def __init__(self, block: MetaFormerBlock):
        super().__init__()
        dim = block.norm1.weight.numel()
        mixer = block.token_mixer
        ls1, ls2 = _scale_vector(block.layer_scale1, dim), _scale_vector(block.layer_scale2, dim)
        w1, b1, self.norm1 = _norm_affine(block.norm1, dim)
        self.post_scale = self.post_bias = None
        if isinstance(mixer, SepConvMixer):
            _fold_input_affine(mixer.pwconv1, w1, b1)
            s, b = float(mixer.act1.scale), float(mixer.act1.bias)
            if abs(s) > 1e-12:
                with torch.no_grad():
                    mixer.dwconv.weight.mul_(s)
                mixer.act1 = ShiftedSquaredReLU(b / s)
            _fold_output_scale(mixer.pwconv2, ls1)
        elif isinstance(mixer, AttentionMixer):
            _fold_input_affine(mixer.qkv, w1, b1)
            _fold_output_scale(mixer.proj, ls1)
        else:  # identity / pooling / random mixing commute with per-channel scaling
            passes_bias = not isinstance(mixer, PoolingMixer)  # pool(b) - b == 0
            self.post_scale = nn.Parameter(ls1 * w1, requires_grad=False)
            self.post_bias = nn.Parameter(ls1 * b1 * passes_bias, requires_grad=False)
        self.token_mixer = mixer
        self.res_scale1 = _res(block.res_scale1)
        w2, b2, self.norm2 = _norm_affine(block.norm2, dim)
        mlp = block.mlp
        _fold_input_affine(mlp.fc1, w2, b2)
        if isinstance(mlp.act, StarReLU):
            _fold_starrelu_into(mlp.fc2, mlp.act)
            self.act = _relu_squared
        else:
            self.act = mlp.act
        _fold_output_scale(mlp.fc2, ls2)
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2
        self.res_scale2 = _res(block.res_scale2)
        self.chunk_mlp = self.norm2.dims == 1
        self.chunk_mixer = self.norm1.dims == 1 and isinstance(mixer, SepConvMixer) \
            and isinstance(mixer.act1, ShiftedSquaredReLU)

    def _act_(self, h: torch.Tensor) -> torch.Tensor:
        return _square_relu_(h) if self.act is _relu_squared else self.act(h)

    def _mlp_chunked(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """``in_place``: x is this block's own intermediate, so the residual sum may overwrite it
        (each chunk reads its rows before writing them): no output allocation, no copy of the skip."""
        c = x.shape[-1]
        rows, out = x.reshape(-1, c), x if in_place else torch.empty_like(x)
        flat = out.view(-1, c)
        step = chunk_rows(self.fc1.out_features)
        for i in range(0, rows.shape[0], step):
            xi = rows[i:i + step]
            h = self._act_(self.fc1(_layer_norm_rows(xi, self.norm2.eps)))
            if in_place:
                _residual_add_(xi, h, self.fc2, self.res_scale2)
            else:
                _residual_into(flat[i:i + step], h, self.fc2, xi, self.res_scale2)
        return out

    def _sepconv_chunked(self, x: torch.Tensor) -> torch.Tensor:
        mixer = self.token_mixer
        b, hh, ww, c = x.shape
        rows = x.reshape(-1, c)
        hidden = rows.new_empty(rows.shape[0], mixer.pwconv1.out_features)
        step = chunk_rows(hidden.shape[1])
        for i in range(0, rows.shape[0], step):
            hi = hidden[i:i + step]
            normed = _layer_norm_rows(rows[i:i + step], self.norm1.eps)
            _linear_into(hi, normed, mixer.pwconv1)
            _square_relu_(hi, mixer.act1.shift)
        conv = mixer.dwconv(hidden.view(b, hh, ww, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        conv_rows = conv.reshape(-1, conv.shape[-1])  # a view when the conv kept channels-last
        out = torch.empty_like(x)
        flat = out.view(-1, c)
        for i in range(0, rows.shape[0], step):
            _residual_into(flat[i:i + step], conv_rows[i:i + step], mixer.pwconv2, rows[i:i + step],
                           self.res_scale1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _eager_inference(x):
            x = self._sepconv_chunked(x) if self.chunk_mixer else self._mixer_half(x)
            # both mixer halves return a fresh tensor, so the MLP half may accumulate into it
            return self._mlp_chunked(x, in_place=True) if self.chunk_mlp else self._mlp_half(x)
        return self._mlp_half(self._mixer_half(x))

    def _mixer_half(self, x: torch.Tensor) -> torch.Tensor:
        y = self.token_mixer(self.norm1(x))
        if self.post_scale is not None:
            y = torch.addcmul(self.post_bias, y, self.post_scale)
        return y + x if self.res_scale1 is None else torch.addcmul(y, x, self.res_scale1)

    def _mlp_half(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm2(x))))
        return y + x if self.res_scale2 is None else torch.addcmul(y, x, self.res_scale2)


def _relu_squared(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


def _res(module: nn.Module):
    return nn.Parameter(module.scale.detach().clone(), requires_grad=False) if isinstance(module, Scale) else None


@torch.no_grad()
def fold_metaformer(model: MetaFormer) -> MetaFormer:
    """Replace every block of ``model`` (in place) by its folded form; the model must be in eval mode.
    Blocks with a mixer the folding does not know (Lowtention, ConvMod, ... in a mixed MetaFormer) stay
    as they are: their mixers need the norm's affine on their input, and stay exact that way."""
    for stage in model.stages:
        stage.blocks = nn.Sequential(*[FoldedBlock(b) if isinstance(b, MetaFormerBlock)
                                       and isinstance(b.token_mixer, FOLDABLE_MIXERS) else b
                                       for b in stage.blocks])
    return model
