"""Benchmark candidates: what a spec string such as ``convformer_s18@fast`` or ``onnx:timm:caformer_s18``
builds, and the input it takes.
A candidate is a spec string:
  ``NAME``            our model, eager fp32
  ``NAME@fast``       ``convformer.optimize`` (folded), fp32;  ``NAME@fast-bf16`` in bfloat16;
                      ``NAME@fast-int8`` with int8 dynamic-quantized Linear layers (MetaFormers)
  ``NAME@compile``    folded and ``torch.compile``d
  ``timm:NAME``       timm's model, eager; ``timm:NAME@compile``; ``timm:NAME@bf16`` (autocast)
  ``NAME@ort``        ``optimize(model, runtime="onnxruntime")``: our graph for ONNX Runtime, static shapes
  ``onnx:NAME``       our model exported to ONNX, run in onnxruntime; ``onnx:timm:NAME`` timm's export;
                      ``onnx:NAME@fast`` the folded export; ``onnx:NAME@ort`` the graph built for ONNX Runtime
  ``ov:NAME``         the same exports run by OpenVINO (float32, latency hint): ``ov:timm:NAME``,
                      ``ov:NAME@fast``, ``ov:NAME@ort`` (needs the openvino package: the ``openvino`` extra)
  ``NAME@ov``         ``optimize(model, runtime="openvino")``;  ``NAME@auto``  ``optimize(model, runtime="auto")``
  ``NAME@ort-int8``   static int8 (QDQ) in ONNX Runtime, calibrated on random inputs (speed only; accuracy:
                      benchmarks/int8_accuracy.py calibrates on real data)
                      ``onnx:NAME@official`` the authors' own ONNX export (CFSR), found like their weights

Inputs are (batch, 3, H, W); the size defaults to the first model card's input size (224x224 for the
classifiers, the 1280x720-output LR size for the super-resolution models). Pose lifters take
(batch, T, 17, 2) windows of their receptive field T instead; one "image" in the table is one window.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from convformer.errors import ConvformerError
from convformer.optimize import optimize, optimize_for_export
from convformer.registry import create_model, model_card


def _peer_timm(name: str):
    import timm
    try:
        return timm.create_model(name).eval()
    except RuntimeError as err:
        raise ConvformerError(f"timm has no model {name!r}") from err


#: prefixes of candidates run from an exported ONNX file, and the runtime that runs it
FILE_RUNNERS = {"onnx:": "onnxruntime", "ov:": "openvino"}
#: the variant suffix that runs our model in each runtime of ``optimize(model, runtime=...)`` ("" = torch)
RUNTIME_VARIANTS = {"torch": "", "onnxruntime": "ort", "openvino": "ov", "auto": "auto"}


def strip_runner(spec: str) -> str:
    """"onnx:timm:resnet50@fast" -> "timm:resnet50@fast"."""
    for prefix in FILE_RUNNERS:
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return spec


def parse_size(size) -> tuple[int, int] | None:
    """224 / "224" -> (224, 224); "180x320" -> (180, 320) (height x width); None stays None."""
    if size is None or isinstance(size, tuple):
        return size
    if isinstance(size, int):
        return (size, size)
    parts = str(size).lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) not in (1, 2) or min(hw) < 1:
        raise ConvformerError(f"--img-size takes N or HxW (e.g. 224 or 180x320), got {size!r}")
    return hw * 2 if len(hw) == 1 else hw


def default_size(specs: list[str]) -> tuple[int, int]:
    """The input size of the first candidate's model card."""
    name = strip_runner(specs[0]).partition("@")[0].removeprefix("timm:")
    try:
        return tuple(model_card(name).input_size[-2:])
    except ConvformerError:
        return (224, 224)


def sample_shape(model, hw) -> tuple:
    """One input sample's shape: (T, J, 2) for a pose lifter (its receptive field), else (3, H, W)."""
    card = getattr(model, "model_card", None)
    if card is not None and card.task == "pose":
        return tuple(card.input_size)
    if card is not None and card.task == "speech":
        raise ConvformerError(f"{card.name} is a speech model; measure it with benchmarks/asr_stream_speed.py")
    return (3, *hw)


def _file_runner(runtime: str, path, threads: int | None):
    """An ONNX file run by ``runtime`` (a value of FILE_RUNNERS), torch tensor in."""
    if runtime == "openvino":
        from convformer.runtimes import openvino_runner
        run = openvino_runner(path, threads)
        return lambda x: run(x.numpy())
    from convformer.export import onnx_session
    session = onnx_session(path, threads)
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: x.numpy()})


def build_candidate(spec: str, img_size, threads: int | None, pretrained: bool = False):
    """Return (callable taking a batch -> output, base torch model for counting, model name).

    ``pretrained`` loads our models' published weights (timing barely depends on them, but the
    authors' ONNX files carry trained weights, so a like-for-like run uses the same)."""
    hw = parse_size(img_size)
    prefix = next((p for p in FILE_RUNNERS if spec.startswith(p)), None)
    onnx = prefix is not None
    runner = FILE_RUNNERS.get(prefix)
    body = spec[len(prefix):] if onnx else spec
    name, _, variant = body.partition("@")
    is_timm = name.startswith("timm:")
    base_name = name[len("timm:"):] if is_timm else name
    model = _peer_timm(base_name) if is_timm else \
        create_model(base_name, **({"pretrained": True} if pretrained else {})).eval()
    if onnx:
        from convformer.export import export_onnx, onnx_session
        if variant == "official":
            from convformer.weights.hub import official_onnx
            return _file_runner(runner, official_onnx(model_card(base_name)), threads), model, base_name
        if variant not in ("", "fast", "ort") or (is_timm and variant):
            raise ConvformerError(f"unknown benchmark variant {spec!r} (see `convformer bench --help`)")
        path = Path(tempfile.mkdtemp()) / f"{base_name}.onnx"
        pose = getattr(getattr(model, "model_card", None), "task", "") == "pose"  # needs constant kernels
        target = {"fast": "generic", "ort": "onnxruntime"}.get(variant, "generic" if pose else None)
        export_onnx(model, path, hw, input_shape=sample_shape(model, hw),
                    export_form=optimize_for_export(model, target) if target else None)
        return _file_runner(runner, path, threads), model, base_name
    if variant in ("", "eager"):
        fn = model
    elif variant == "bf16" and is_timm:
        def fn(x, _m=model):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _m(x)
    elif variant == "compile":
        fn = torch.compile(model) if is_timm else optimize(model, compile=True)
    elif variant == "ort-int8" and not is_timm:  # timing only: calibrated on random inputs of the batch's shape
        shape = (2, *sample_shape(model, hw))
        calibration = [torch.rand(shape, generator=torch.Generator().manual_seed(i)) for i in range(4)]
        fn = optimize(model, runtime="onnxruntime", dtype="int8", calibration=calibration, threads=threads)
    elif variant in ("ort", "ov", "auto") and not is_timm:
        runtime = next(r for r, v in RUNTIME_VARIANTS.items() if v == variant)
        fn = optimize(model, runtime=runtime, threads=threads)
    elif variant in ("fast", "fast-bf16", "fast-int8") and not is_timm:
        fn = optimize(model, dtype={"fast": None, "fast-bf16": "bf16", "fast-int8": "int8"}[variant])
    else:
        raise ConvformerError(f"unknown benchmark variant {spec!r} (see `convformer bench --help`)")
    return fn, model, base_name
