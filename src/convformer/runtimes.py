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
import logging
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


class _Batches:
    """onnxruntime.quantization's calibration reader over torch batches (or (inputs, labels) pairs)."""

    def __init__(self, batches, input_name: str, limit: int):
        self.input_name, self.items = input_name, []
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not torch.is_tensor(x):
                raise ConvformerError(f"calibration batches must be tensors or (tensor, labels), got {type(x).__name__}")
            self.items.append(np.ascontiguousarray(x.detach().float().cpu().numpy()))
            if len(self.items) >= limit:
                break
        if not self.items:
            raise ConvformerError("calibration gave no batches; pass a few batches of real inputs")
        self._next = iter(self.items)

    def get_next(self):
        x = next(self._next, None)
        return None if x is None else {self.input_name: x}


class OnnxRuntimeInt8Model:
    """Static post-training int8 in ONNX Runtime: the model's channels-last export form with its pointwise
    and convolution layers quantized (QDQ: int8 weights per output channel, uint8 activations whose ranges
    are measured on ``calibration``, real inputs), the classifier head and norms left in float32.
    One session serves every batch size. It changes outputs: ``calibration_diff`` is the largest absolute
    difference from the plain model on the calibration batches; check accuracy on held-out data."""

    runtime = "onnxruntime"

    def __init__(self, model: nn.Module, export_form: nn.Module, calibration, threads: int | None = None,
                 max_batches: int = 16):
        require_runtime("onnxruntime")
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        from convformer.export.onnx import export_onnx, onnx_session
        self.reference = copy.deepcopy(model).eval()
        _pass_attributes(self, model)
        self.input_name = "keypoints" if getattr(self.model_card, "task", None) == "pose" else "images"
        reader = _Batches(calibration, self.input_name, max_batches)
        self._folder = tempfile.TemporaryDirectory(prefix="convformer-int8-")
        fp32, int8 = Path(self._folder.name) / "fp32.onnx", Path(self._folder.name) / "int8.onnx"
        sample = reader.items[0].shape[1:]
        if self.input_name == "keypoints":
            export_onnx(self.reference, fp32, 1, input_shape=sample, export_form=export_form)
        else:
            export_onnx(self.reference, fp32, tuple(sample[1:]), in_chans=sample[0], export_form=export_form)
        root = logging.getLogger()
        level = root.level
        # products of two activations (attention's q k^T and attn v) stay float32: quantizing both sides
        # costs accuracy and, measured on CAFormer-S18, speed
        import onnx
        graph = onnx.load(str(fp32)).graph
        weights = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        keep_float = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger on every call
            try:
                quantize_static(str(fp32), str(int8), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["Conv", "MatMul"], nodes_to_exclude=keep_float)
            finally:
                root.setLevel(level)
        session = onnx_session(int8, threads)
        self._run = lambda x: session.run(None, {self.input_name: x})[0]
        with torch.no_grad():
            self.calibration_diff = max(float(np.abs(self._run(x) - self.reference(torch.from_numpy(x)).numpy()).max())
                                        for x in reader.items)

    def eval(self) -> "OnnxRuntimeInt8Model":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_tensor(self.reference, x)
        return torch.from_numpy(np.asarray(self._run(np.ascontiguousarray(x.detach().float().cpu().numpy()))))

    def __repr__(self) -> str:
        name = getattr(self.model_card, "name", type(self.reference).__name__)
        return f"OnnxRuntimeInt8Model({name}, calibration diff {self.calibration_diff:.3g})"
