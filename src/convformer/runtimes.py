"""Other inference runtimes behind the model's own call: ``optimize(model, runtime="onnxruntime")``.

:class:`OnnxRuntimeModel` exports the model's export form (``convformer.optimize.optimize_for_export``)
to ONNX once per input shape, with every dimension fixed, so that ONNX Runtime plans memory and layouts
for exactly that shape, and keeps the last few sessions (a batch-size-aware cache: batch 1 and batch 32
each get their own). Each new session is checked against the plain model on a random input of its shape
before it is used; a graph that disagrees by more than ``atol`` is an error, never a silent answer.
Calls take and return torch tensors, so the object stands in for the module in `predict`-style code.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convformer.errors import ConvformerError


class OnnxRuntimeModel:
    """``model`` run by ONNX Runtime's CPU provider, one static-shape session per input shape seen."""

    def __init__(self, model: nn.Module, export_form: nn.Module, threads: int | None = None, atol: float = 1e-4,
                 max_sessions: int = 4, opset: int = 17):
        """``export_form``: what is exported (``optimize_for_export(model)``); ``model`` is the reference."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConvformerError("runtime='onnxruntime' needs the onnxruntime package: pip install onnxruntime") from None
        if max_sessions < 1:
            raise ConvformerError(f"max_sessions must be at least 1, got {max_sessions}")
        self.reference = copy.deepcopy(model).eval()
        self.export_form = export_form.eval()
        self.threads, self.atol, self.max_sessions, self.opset = threads, atol, max_sessions, opset
        self.model_card = getattr(model, "model_card", None)
        self.input_name = "keypoints" if getattr(self.model_card, "task", None) == "pose" else "images"
        for name in ("receptive_field", "num_joints", "seq2seq", "scale", "num_classes"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        self._sessions: OrderedDict[tuple, object] = OrderedDict()
        self._folder = tempfile.TemporaryDirectory(prefix="convformer-ort-")
        self.checks: dict[tuple, float] = {}   # input shape -> max |ORT - PyTorch| measured when built

    def eval(self) -> "OnnxRuntimeModel":
        return self

    def session(self, shape: tuple):
        """The session for inputs of exactly ``shape`` (built, checked and cached on first use)."""
        shape = tuple(int(s) for s in shape)
        if shape in self._sessions:
            self._sessions.move_to_end(shape)
            return self._sessions[shape]
        from convformer.export.onnx import onnx_session
        path = Path(self._folder.name) / f"{'x'.join(map(str, shape))}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on input checks: constant for a fixed shape
            torch.onnx.export(self.export_form, (torch.zeros(shape),), str(path), input_names=[self.input_name],
                              output_names=["output"], opset_version=self.opset, dynamo=False)
        sess = onnx_session(path, self.threads)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = self.reference(x).float().numpy()
        diff = float(np.abs(sess.run(None, {self.input_name: x.numpy()})[0] - ref).max())
        self.checks[shape] = diff
        if not diff <= self.atol:
            raise ConvformerError(f"ONNX Runtime's output for inputs {shape} differs from PyTorch by {diff:.3g} "
                                  f"(tolerance {self.atol:g}); use runtime='torch' for this model")
        self._sessions[shape] = sess
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return sess

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x):
            raise ConvformerError(f"expected a torch tensor, got {type(x).__name__}")
        if hasattr(self.reference, "check_input"):
            self.reference.check_input(x)
        out = self.session(tuple(x.shape)).run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        name = getattr(self.model_card, "name", type(self.reference).__name__)
        return f"OnnxRuntimeModel({name}, sessions for {list(self._sessions)})"
