"""Other inference runtimes behind the model's own call: ``optimize(model, runtime=...)``.

:class:`OnnxRuntimeModel` and :class:`OpenVinoModel` export the model's form for that runtime
(``convformer.optimize.optimize_for_export``) to ONNX once per input shape, with every dimension fixed, so
that the runtime plans memory and layouts for exactly that shape, and keep the last few compiled models (a
batch-size-aware cache: batch 1 and batch 32 each get their own). Each new one is checked against the plain
model on a random input of its shape before it is used; a graph that disagrees by more than ``atol`` is an
error, never a silent answer. Calls take and return torch tensors, so the objects stand in for the module
in `predict`-style code.

:class:`AutoRuntimeModel` (``runtime="auto"``) times every runtime that is installed on each new input
shape for a short budget and keeps the fastest for that shape.
"""
from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from convformer.errors import ConvformerError

#: attributes of the model that the wrappers pass through (pose and SR code reads them)
PASSED_ATTRIBUTES = ("receptive_field", "num_joints", "seq2seq", "scale", "num_classes", "cfg", "in_chans")

#: the pip package each runtime needs, and the extra that installs it
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}


def runtime_available(runtime: str) -> bool:
    """Whether ``runtime``'s package imports here ("torch" always does)."""
    if runtime == "torch":
        return True
    try:
        __import__(RUNTIME_PACKAGES[runtime][0])
    except ImportError:
        return False
    return True


def require_runtime(runtime: str) -> None:
    """A one-line error naming the package (and the extra) when ``runtime`` is not installed."""
    if not runtime_available(runtime):
        package, extra = RUNTIME_PACKAGES[runtime]
        raise ConvformerError(f"runtime={runtime!r} needs the {package} package: pip install {package} "
                              f"(or pip install 'convformer[{extra}]')")


def _pass_attributes(target, model: nn.Module) -> None:
    target.model_card = getattr(model, "model_card", None)
    for name in PASSED_ATTRIBUTES:
        if hasattr(model, name):
            setattr(target, name, getattr(model, name))


def _check_tensor(reference: nn.Module, x) -> None:
    if not torch.is_tensor(x):
        raise ConvformerError(f"expected a torch tensor, got {type(x).__name__}")
    if hasattr(reference, "check_input"):
        reference.check_input(x)


class ExportedModel:
    """``model`` run by another runtime from static-shape ONNX exports of ``export_form``, one per input
    shape seen; subclasses say how a file becomes a callable (``_load``)."""

    runtime = ""

    def __init__(self, model: nn.Module, export_form: nn.Module, threads: int | None = None, atol: float = 1e-4,
                 max_sessions: int = 4, opset: int = 17):
        """``export_form``: what is exported (``optimize_for_export(model, ...)``); ``model`` is the reference."""
        require_runtime(self.runtime)
        if max_sessions < 1:
            raise ConvformerError(f"max_sessions must be at least 1, got {max_sessions}")
        self.reference = copy.deepcopy(model).eval()
        self.export_form = export_form.eval()
        self.threads, self.atol, self.max_sessions, self.opset = threads, atol, max_sessions, opset
        _pass_attributes(self, model)
        self.input_name = "keypoints" if getattr(self.model_card, "task", None) == "pose" else "images"
        self._sessions: OrderedDict[tuple, Callable] = OrderedDict()
        self._folder = tempfile.TemporaryDirectory(prefix=f"convformer-{self.runtime}-")
        self.checks: dict[tuple, float] = {}   # input shape -> max |runtime - PyTorch| measured when built

    def eval(self) -> "ExportedModel":
        return self

    def _load(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        raise NotImplementedError

    def session(self, shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
        """The compiled model for inputs of exactly ``shape`` (built, checked and cached on first use)."""
        shape = tuple(int(s) for s in shape)
        if shape in self._sessions:
            self._sessions.move_to_end(shape)
            return self._sessions[shape]
        path = Path(self._folder.name) / f"{'x'.join(map(str, shape))}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on input checks: constant for a fixed shape
            torch.onnx.export(self.export_form, (torch.zeros(shape),), str(path), input_names=[self.input_name],
                              output_names=["output"], opset_version=self.opset, dynamo=False)
        run = self._load(path)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = self.reference(x).float().numpy()
        diff = float(np.abs(run(x.numpy()) - ref).max())
        self.checks[shape] = diff
        if not diff <= self.atol:
            raise ConvformerError(f"{self.runtime}'s output for inputs {shape} differs from PyTorch by {diff:.3g} "
                                  f"(tolerance {self.atol:g}); use runtime='torch' for this model")
        self._sessions[shape] = run
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_tensor(self.reference, x)
        out = self.session(tuple(x.shape))(np.ascontiguousarray(x.detach().float().cpu().numpy()))
        return torch.from_numpy(np.asarray(out))

    def __repr__(self) -> str:
        name = getattr(self.model_card, "name", type(self.reference).__name__)
        return f"{type(self).__name__}({name}, compiled for {list(self._sessions)})"


class OnnxRuntimeModel(ExportedModel):
    """ONNX Runtime's CPU provider, one static-shape session per input shape seen."""

    runtime = "onnxruntime"

    def _load(self, path: Path):
        from convformer.export.onnx import onnx_session
        sess = onnx_session(path, self.threads)
        name = self.input_name
        return lambda x: sess.run(None, {name: x})[0]


def openvino_runner(path, threads: int | None = None, hint: str = "LATENCY") -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file compiled by OpenVINO for the CPU in float32, as a numpy -> numpy callable."""
    require_runtime("openvino")
    import openvino as ov
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer([x])[0].copy()


class OpenVinoModel(ExportedModel):
    """OpenVINO's CPU plugin (float32, latency hint), one compiled model per input shape seen."""

    runtime = "openvino"

    def _load(self, path: Path):
        return openvino_runner(path, self.threads)


class AutoRuntimeModel:
    """Chooses, per input shape, the fastest of the given runtimes: each is built (and checked) on the first
    call with that shape, timed for about ``budget`` seconds in all, and the fastest is kept."""

    def __init__(self, candidates: dict[str, Callable], model: nn.Module, budget: float = 3.0):
        if not candidates:
            raise ConvformerError("runtime='auto' found no runtime to choose from")
        self.candidates, self.budget = candidates, budget
        self.reference = model
        _pass_attributes(self, model)
        self.choices: dict[tuple, str] = {}                 # input shape -> the runtime chosen
        self.timings: dict[tuple, dict[str, float]] = {}    # input shape -> runtime -> median seconds

    def eval(self) -> "AutoRuntimeModel":
        return self

    def _choose(self, x: torch.Tensor) -> str:
        shape = tuple(x.shape)
        if shape in self.choices:
            return self.choices[shape]
        per_runtime = self.budget / len(self.candidates)
        times = {}
        with torch.inference_mode():
            for name, fn in self.candidates.items():
                fn(x)  # build, check and warm up
                runs, start = [], time.perf_counter()
                while not runs or (time.perf_counter() - start < per_runtime and len(runs) < 50):
                    t = time.perf_counter()
                    fn(x)
                    runs.append(time.perf_counter() - t)
                times[name] = float(np.median(runs))
        self.timings[shape] = times
        self.choices[shape] = min(times, key=times.get)
        return self.choices[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_tensor(self.reference, x)
        return self.candidates[self._choose(x)](x)

    def __repr__(self) -> str:
        name = getattr(self.model_card, "name", type(self.reference).__name__)
        return f"AutoRuntimeModel({name}, chosen {self.choices})"
