"""Folding per-channel affine ops into linear layers, and int8 dynamic quantization: the inference
transforms that several systems' fast paths share (MetaFormer's ``vision/fold.py``, CFSR's
``sr/cfsr_fast.py``, ``optimize(dtype="int8")``). Each works in place on an eval-mode copy."""
from __future__ import annotations

import warnings

import torch
from torch import nn


def fold_input_affine(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """linear(w * x + b) == linear'(x): scale the input columns, move W b into the bias."""
    with torch.no_grad():
        shift = linear.weight @ bias
        linear.weight.mul_(weight[None, :])
        if linear.bias is None and bool(shift.abs().max() > 0):
            linear.bias = nn.Parameter(shift)
        elif linear.bias is not None:
            linear.bias.add_(shift)


def fold_output_scale(linear: nn.Linear, scale: torch.Tensor) -> None:
    """diag(s) linear(x) == linear'(x): scale the output rows and the bias."""
    with torch.no_grad():
        linear.weight.mul_(scale[:, None])
        if linear.bias is not None:
            linear.bias.mul_(scale)


def quantize_linears_int8(module: nn.Module) -> nn.Module:
    """Swap every Linear inside ``module`` (in place) for an int8 dynamic-quantized one: weights int8
    per output channel, activations quantized per batch on the fly (fbgemm/oneDNN kernels).
    ``optimize`` passes a MetaFormer's stages, so its classifier head stays float32 (a tiny share of the
    time, and right on the logits), or a whole merged CFSR network."""
    from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated in favour of torchao (not a dependency
        # here); the eager dynamic path still works in this torch, so the warning is noise per call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return module
