"""``convformer.optimize``: the fast inference path in one call.

For MetaFormer models it folds every per-channel affine op into its neighbouring linear layer (see
``models/fold.py``); for LowFormer every BatchNorm into its convolution and runs batches channels-last
(``models/lowformer_fast.py``); for the pose lifters it computes the dynamic convolutional attention's fused
Q/K/V kernels once (instead of in every forward); for CFSR it returns the folded, stripe-by-stripe network of ``models/cfsr_fast.py``
(``compile=True`` compiles the plain merged network instead). It optionally casts the weights to
bfloat16 (inputs are cast on the way in, outputs back to float32 on the way out), or, for MetaFormers
and CFSR, quantizes the Linear layers (of the stages; of the merged CFSR network) to int8 (dynamic: weights int8 per channel, activations
quantized on the fly), and optionally wraps the result in ``torch.compile`` (the folded model is what
gets compiled; inductor's weight freezing measured no faster on it, so it is not switched on).
The returned model is a copy in eval mode; the original is untouched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import ConvformerError
from .models.cfsr import CFSR
from .models.cfsr_fast import FastCFSR
from .models.fold import fold_metaformer, quantize_linears_int8
from .models.lowformer import LowFormer
from .models.lowformer_fast import FastLowFormer, fold_lowformer
from .models.metaformer import MetaFormer
from .models.pose import PoseLifter

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "int8": torch.qint8}


def _cast_input(module, args):
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _cast_output(module, args, output):
    if torch.is_tensor(output):
        return output.float()
    return [o.float() for o in output]


def optimize(model: nn.Module, dtype: str | torch.dtype | None = None, compile: bool = False,
             fold: bool = True) -> nn.Module:
    """Return an inference-optimised copy of ``model``.

    dtype: None/"fp32" keeps float32; "bf16" runs in bfloat16 (fast on CPUs with AVX-512-BF16/AMX and
    on recent GPUs), with float32 inputs and outputs; "int8" (MetaFormers, CPU, eager only) quantizes
    the stages' Linear layers dynamically; it changes the logits slightly, so check accuracy with
    ``output_agreement`` or ``engine.evaluate`` on real data first. compile: wrap in ``torch.compile``.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConvformerError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype == torch.qint8 and (compile or not fold or not isinstance(model, (MetaFormer, CFSR))):
        raise ConvformerError("dtype='int8' is implemented for MetaFormer classifiers and CFSR on the eager "
                              "path (not with compile=True or fold=False)")
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if fold and isinstance(fast, MetaFormer):
        fold_metaformer(fast)
    elif fold and isinstance(fast, LowFormer):
        # eager: a channels-last copy for batches, NCHW for single images; compiled: one folded
        # channels-last graph whose weights inductor may treat as constants ("freezing"), which lets it
        # prepack them and fuse each conv with its activation and residual add
        fast = fold_lowformer(fast).to(memory_format=torch.channels_last) if compile else FastLowFormer(fast)
    elif isinstance(fast, CFSR):
        # int8 swaps modules, which the striped fast path (fused kernels) does not have: use the merged net
        fast = fast.merge() if compile or not fold or dtype == torch.qint8 else FastCFSR(fast)
    elif isinstance(fast, PoseLifter):
        fast.fuse()
    if dtype == torch.qint8:
        quantize_linears_int8(fast.stages if isinstance(fast, MetaFormer) else fast)
    elif dtype is not None and dtype != torch.float32:
        fast = fast.to(dtype)
        fast.register_forward_pre_hook(_cast_input)
        fast.register_forward_hook(_cast_output)
    if compile:
        fast = torch.compile(fast, options={"freezing": True} if isinstance(model, LowFormer) else None)
    return fast


@torch.no_grad()
def output_agreement(reference: nn.Module, candidate: nn.Module, batches) -> dict:
    """How far ``candidate`` (e.g. ``optimize(model, dtype="int8")``) strays from ``reference`` on real
    data: ``batches`` yields images or (images, labels). Returns the share of images whose top-1 class
    agrees, the largest absolute logit difference and, with labels, both models' top-1 accuracy (%)."""
    reference.eval()
    candidate.eval()
    count = agree = ref_hits = cand_hits = 0
    labelled, max_diff = False, 0.0
    for batch in batches:
        images, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        ref, out = reference(images).float(), candidate(images).float()
        max_diff = max(max_diff, (ref - out).abs().max().item())
        agree += int((ref.argmax(1) == out.argmax(1)).sum())
        count += len(images)
        if labels is not None:
            labelled = True
            ref_hits += int((ref.argmax(1) == labels).sum())
            cand_hits += int((out.argmax(1) == labels).sum())
    result = {"count": count, "top1_agreement": agree / max(count, 1), "max_abs_logit_diff": max_diff}
    if labelled:
        result.update(reference_top1=100.0 * ref_hits / count, candidate_top1=100.0 * cand_hits / count)
    return result


def optimize_for_export(model: nn.Module) -> nn.Module:
    """The fastest form that exports to ONNX: MetaFormers and LowFormers folded; CFSR merged (its striped fast path is
    eager-only Python, which a graph export would unroll for one image size)."""
    if isinstance(model, CFSR):
        return optimize(model, fold=False)
    if isinstance(model, LowFormer):  # the folded network alone: the batch-size switch is eager Python
        return fold_lowformer(copy.deepcopy(model))
    return optimize(model)  # pose lifters: the fused kernels must be constants in the graph
