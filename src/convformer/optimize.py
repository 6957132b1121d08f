"""``convformer.optimize``: the fast inference path in one call.

Each system registers the fast path of its model classes with :func:`register_fast_path` (in the
system package's ``__init__``); this module knows none of them. What they do:

- MetaFormer (``vision/fold.py``): every per-channel affine op folded into its neighbouring linear layer;
  int8 quantizes the stages' Linear layers.
- LowFormer (``vision/lowformer_fast.py``): BatchNorm folded into its convolution, batches channels-last;
  compiled, one folded channels-last graph with inductor freezing.
- CFSR (``sr/cfsr_fast.py``): the folded stripe-by-stripe network (the merged one when compiled or int8).
- Pose lifters: the dynamic convolutional attention's fused Q/K/V kernels computed once.

On top of that it optionally casts the weights to bfloat16 (inputs are cast on the way in, outputs back to
float32 on the way out), quantizes dynamically to int8 (weights int8 per channel, activations quantized on
the fly) where the model's fast path says which Linear layers, and wraps the result in ``torch.compile``.
The returned model is a copy in eval mode; the original is untouched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from convformer.errors import ConvformerError

RUNTIMES = ("torch", "onnxruntime", "openvino", "auto")
#: what an ONNX export is built for: "generic" (the folded PyTorch model as it is) or "onnxruntime" (a graph
#: rewritten so that ONNX Runtime's CPU provider keeps it in its blocked layout, where the model has one)
EXPORT_TARGETS = ("generic", "onnxruntime")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "int8": torch.qint8}


@dataclass(frozen=True)
class FastPath:
    """How one model class gets fast. ``prepare(copy, fold, compile, int8)`` turns a detached eval-mode copy
    into the eager fast model (it may return another module); ``int8`` names the part whose Linear layers
    int8 quantizes (None: the model has no int8 path); ``export`` gives the form an ONNX export should trace
    (None: ``optimize(model)``); ``onnxruntime`` gives the form built for ONNX Runtime's CPU provider
    (``optimize_for_export(model, "onnxruntime")``, which OpenVINO runs too; None: the same as ``export``)."""
    prepare: Callable[[nn.Module, bool, bool, bool], nn.Module]
    int8: Optional[Callable[[nn.Module], nn.Module]] = None
    export: Optional[Callable[[nn.Module], nn.Module]] = None
    onnxruntime: Optional[Callable[[nn.Module], nn.Module]] = None
    compile_options: dict = field(default_factory=dict)


_FAST_PATHS: dict[type, FastPath] = {}


def register_fast_path(model_type: type, path: FastPath) -> None:
    """Give ``model_type`` (and its subclasses) a fast path; systems call this when they are imported."""
    _FAST_PATHS[model_type] = path


def fast_path(model: nn.Module) -> Optional[FastPath]:
    """The registered fast path of ``model``'s class (the nearest base class's), or None."""
    for attempt in range(2):
        for cls in type(model).__mro__:
            if cls in _FAST_PATHS:
                return _FAST_PATHS[cls]
        if attempt == 0:  # a model built without the registry: load the systems by name, then look again
            from convformer.registry import _ensure_loaded
            _ensure_loaded()
    return None


def _cast_input(module, args):
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _cast_output(module, args, output):
    if torch.is_tensor(output):
        return output.float()
    return [o.float() for o in output]


def optimize(model: nn.Module, dtype: str | torch.dtype | None = None, compile: bool = False,
             fold: bool = True, runtime: str = "torch", threads: int | None = None, calibration=None) -> nn.Module:
    """Return an inference-optimised copy of ``model``.

    runtime: "torch" (this function's own paths, below); "onnxruntime" or "openvino": a callable that runs
    the model's export form for that runtime, one static-shape compiled model per input shape, each checked
    against the plain model when it is built (``convformer.runtimes``; ``threads`` sets their threads);
    "auto": times each installed runtime on every new input shape (a few seconds) and keeps the fastest.
    ``runtime="onnxruntime", dtype="int8", calibration=batches``: static int8 (QDQ) calibrated on
    ``calibration`` (real inputs; :class:`convformer.runtimes.OnnxRuntimeInt8Model`).

    dtype: None/"fp32" keeps float32; "bf16" runs in bfloat16 (fast on CPUs with AVX-512-BF16/AMX and
    on recent GPUs), with float32 inputs and outputs; "int8" (MetaFormers and CFSR, CPU, eager only)
    quantizes Linear layers dynamically; it changes the outputs slightly, so check accuracy with
    ``output_agreement`` or an evaluation on real data first. compile: wrap in ``torch.compile``.
    A model class without a registered fast path is only copied, cast and compiled.
    """
    check_runtime(runtime)
    if runtime == "onnxruntime" and dtype == "int8" and not compile and fold:
        if calibration is None:
            raise ConvformerError("int8 in ONNX Runtime is calibrated on real inputs: pass calibration= a few "
                                  "batches of them (a DataLoader or a list of tensors)")
        from convformer.runtimes import OnnxRuntimeInt8Model
        return OnnxRuntimeInt8Model(model, optimize_for_export(model, "generic"), calibration, threads=threads)
    if runtime != "torch":
        if compile or dtype not in (None, "fp32", "float32", torch.float32) or not fold:
            raise ConvformerError(f"runtime={runtime!r} runs float32 as exported (or, for onnxruntime, "
                                  "dtype='int8' with calibration=); compile, fold=False and bf16 apply to "
                                  "runtime='torch'")
        return _other_runtime(model, runtime, threads)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConvformerError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    path = fast_path(model)
    int8 = dtype == torch.qint8
    if int8 and (compile or not fold or path is None or path.int8 is None):
        raise ConvformerError("dtype='int8' is implemented for MetaFormer classifiers and CFSR on the eager "
                              "path (not with compile=True or fold=False)")
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if path is not None:
        fast = path.prepare(fast, fold, compile, int8)
    if int8:
        from convformer.layers.folding import quantize_linears_int8
        quantize_linears_int8(path.int8(fast))
    elif dtype is not None and dtype != torch.float32:
        fast = fast.to(dtype)
        fast.register_forward_pre_hook(_cast_input)
        fast.register_forward_hook(_cast_output)
    if compile:
        fast = torch.compile(fast, options=(path.compile_options or None) if path is not None else None)
    return fast


RUNTIME_HELP = ("Inference runtime: torch, onnxruntime, openvino (the openvino extra) or auto (times each "
                "installed one on the first batch of each shape and keeps the fastest); all but torch imply --fast.")


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of RUNTIMES, else a one-line error (commands call it before any work)."""
    if runtime not in RUNTIMES:
        raise ConvformerError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def for_inference(model: nn.Module, fast: bool = False, runtime: str = "torch", threads: int | None = None):
    """What a command runs: ``model`` itself, or ``optimize(model, runtime=...)`` when ``fast`` is set or a
    runtime other than torch is asked for (those run the optimised export form anyway)."""
    if runtime == "torch" and not fast:
        return model
    if runtime != "torch":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ConvformerError(f"--runtime {runtime} runs on the CPU; use --device cpu or --runtime torch")
    return optimize(model, runtime=runtime, threads=threads)


def _other_runtime(model: nn.Module, runtime: str, threads: int | None):
    from convformer import runtimes
    if runtime == "onnxruntime":
        return runtimes.OnnxRuntimeModel(model, optimize_for_export(model, "onnxruntime"), threads=threads)
    if runtime == "openvino":  # the ONNX Runtime form: measured faster in OpenVINO too (docs/deployment.md)
        return runtimes.OpenVinoModel(model, optimize_for_export(model, "onnxruntime"), threads=threads)
    candidates = {"torch": optimize(model)}
    for name in ("onnxruntime", "openvino"):
        if runtimes.runtime_available(name):
            candidates[name] = _other_runtime(model, name, threads)
    return runtimes.AutoRuntimeModel(candidates, model)


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


def optimize_for_export(model: nn.Module, target: str = "generic") -> nn.Module:
    """The fastest form that exports to ONNX, as the model's fast path defines it (eager-only Python, such as
    CFSR's striped path or LowFormer's batch-size switch, would be unrolled by a graph export); by default
    ``optimize(model)``, whose precomputed tensors (e.g. the pose lifter's fused kernels) become constants.
    ``target="onnxruntime"``: the form rewritten for ONNX Runtime's CPU provider where the model has one."""
    if target not in EXPORT_TARGETS:
        raise ConvformerError(f"export target must be one of {', '.join(EXPORT_TARGETS)}, got {target!r}")
    path = fast_path(model)
    if target == "onnxruntime" and path is not None and path.onnxruntime is not None:
        return path.onnxruntime(model)
    if path is not None and path.export is not None:
        return path.export(model)
    return optimize(model)
