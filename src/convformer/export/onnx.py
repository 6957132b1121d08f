"""ONNX export with an output-parity check in ONNX Runtime.

The graph is exported with a dynamic batch dimension (and dynamic height and width for the
super-resolution models, which take any image size), then run in onnxruntime on a random batch and
compared with PyTorch; the file is only put in place (atomically) if the largest absolute difference
is within tolerance, so a wrong export never replaces a good file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convformer.errors import ConvformerError
from convformer.fileio import atomic_write


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, path: str | os.PathLike, img_size, in_chans: int = 3,
                opset: int = 17, atol: float = 1e-4, check_batch: int = 2, dynamic_size: bool | None = None,
                input_shape: tuple | None = None, export_form: nn.Module | None = None) -> dict:
    """Export ``model`` (eval mode) to ``path``; returns {"path", "max_abs_diff", "opset"}.

    ``export_form``: what to trace instead of ``model`` itself, e.g. ``optimize_for_export(model,
    "onnxruntime")``, the form rewritten for ONNX Runtime's CPU provider. The check always compares
    against ``model``.

    ``img_size``: N or (H, W). ``dynamic_size`` (default: for models with a ``scale``, i.e.
    super-resolution) also leaves height and width free. ``input_shape`` gives one sample's shape for
    inputs that are not images (pose lifters: (T, J, 2), input named "keypoints"). Raises
    ConvformerError if onnxruntime's output differs from PyTorch's by more than ``atol``.
    """
    model = model.eval()
    traced = model if export_form is None else export_form.eval()
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    shape = tuple(input_shape) if input_shape else (in_chans, *hw)
    input_name = "keypoints" if input_shape else "images"
    example = torch.rand(1, *shape)
    path = Path(path)
    if dynamic_size is None:
        dynamic_size = bool(getattr(model, "scale", None))
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on input checks, constant for a fixed size
            torch.onnx.export(traced, (example,), tmp, input_names=[input_name], output_names=["output"],
                              dynamic_axes={input_name: axes, "output": axes},
                              opset_version=opset, dynamo=False)
        if getattr(traced, "reshapes_keep_batch", False):
            keep_batch_in_reshapes(tmp)
        diff = _compare(model, tmp, shape, check_batch, input_name)
        result["max_abs_diff"] = diff
        if not diff <= atol:
            raise ConvformerError(f"ONNX export of {path.name} differs from PyTorch by {diff:.3g} "
                                  f"(tolerance {atol:g}); the file was not written")

    result = {"path": str(path), "opset": opset}
    atomic_write(path, write)
    return result


def keep_batch_in_reshapes(path: str | os.PathLike) -> int:
    """Rewrite constant Reshape shapes that start with -1 to start with 0 ("copy the input's first
    dimension"), in place; returns how many. For graphs whose reshapes all keep the batch first (say so
    with a ``reshapes_keep_batch`` attribute on the module): ONNX shape inference then carries the batch
    dimension's name through them, which lets ONNX Runtime prove that tensors after them have the same
    shape as tensors before (its blocked layout needs that for Mul; else it reorders them)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    changed = 0
    for node in model.graph.node:
        tensor = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        if tensor is None:
            continue
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and len(shape) > 1 and shape[0] == -1 and (shape[1:] > 0).all():
            shape = shape.copy()
            shape[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
            changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed


def _compare(model: nn.Module, onnx_path: str, shape: tuple, batch: int, input_name: str) -> float:
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    out = onnx_session(onnx_path).run(None, {input_name: x.numpy()})[0]
    return float(np.abs(out - ref.float().numpy()).max())
