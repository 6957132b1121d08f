"""`convformer export`: ONNX export (dynamic batch) verified in onnxruntime."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from convformer.errors import ConvformerError
from convformer.export import export_onnx
from convformer.optimize import EXPORT_TARGETS, optimize_for_export
from convformer.registry import create_model, model_card
from convformer.weights import load_weights
from convformer.cli.app import app
from convformer.vision.inference import model_from_weights


def _task(model: Optional[str], meta: dict) -> str:
    """The task of the model named, or else of the one the weight file's metadata says it holds."""
    name = model or meta.get("architecture", "")
    try:
        return model_card(name).task
    except ConvformerError:
        return "classification" if not model else model_card(model).task


@app.command()
def export(
    output: str = typer.Argument(..., help="The .onnx file to write."),
    weights: Optional[str] = typer.Option(None, help="Weight file; without it the model's fresh init."),
    model: Optional[str] = typer.Option(None, help="Model name [default: from the weight file]."),
    img_size: Optional[int] = typer.Option(None, help="Input size [default: the model's]."),
    opset: int = typer.Option(17, help="ONNX opset."),
    atol: float = typer.Option(1e-4, help="Largest allowed |onnxruntime - PyTorch| difference."),
    fast: bool = typer.Option(False, "--fast", help="Export the fast inference graph (convformer.optimize_for_export)."),
    target: str = typer.Option("onnxruntime", help="With --fast: the runtime the graph is built for: onnxruntime "
                                                   "(its blocked conv layout; MetaFormers) or generic (the folded "
                                                   "PyTorch model as it is)."),
    chunk_ms: Optional[float] = typer.Option(None, help="Speech models: the streaming step's chunk in ms "
                                                        "[default: the model's smallest]."),
    decoder: str = typer.Option("auto", help="Speech models: the head in the step graph: ctc, rnnt (hybrids and "
                                             "transducers: the greedy decoder and its state in the graph) or "
                                             "auto (rnnt where there is one)."),
):
    """Export to ONNX and check onnxruntime's outputs against PyTorch's."""
    if target not in EXPORT_TARGETS:
        raise ConvformerError(f"--target must be one of {', '.join(EXPORT_TARGETS)}, got {target!r}")
    from convformer.weights import read_state_dict
    # read once; a .nemo archive, or a card's weight tag (SR), goes to its loader as it is
    loaded = read_state_dict(weights) if weights and Path(weights).is_file() and not weights.endswith(".nemo") \
        else None
    task = _task(model, loaded[1] if loaded else {})
    if task == "speech":  # the streaming step, caches in and out
        from convformer.asr.task import load_asr, stream_chunk
        from convformer.asr.stream_onnx import export_stream_step
        from convformer.asr.streaming import StreamingConformer
        net = load_asr(weights, model, loaded)[0] if weights else create_model(model).eval()
        chunk = stream_chunk(StreamingConformer(net.encoder), chunk_ms)
        result = export_stream_step(net, output, chunk, opset=opset, atol=atol, decoder=decoder)
        heads = "RNN-T tokens + decoder state" if result["decoder"] == "rnnt" else "log-probs"
        typer.echo(f"wrote {result['path']} (opset {opset}, streaming step of {result['chunk_ms']} ms: features "
                   f"(batch, {chunk}, {net.cfg.feat_in}) + caches in, frames + {heads} + caches out); max "
                   f"|onnxruntime - PyTorch| over a streamed utterance = {result['max_abs_diff']:.2e}")
        return
    if task == "pose":
        from convformer.pose.task import load_lifter
        net = load_lifter(weights, model, loaded=loaded)[0] if weights else create_model(model).eval()
        net = optimize_for_export(net)  # always: the fused attention kernels must be graph constants
        shape = net.model_card.input_size
        result = export_onnx(net, output, 1, opset=opset, atol=atol, input_shape=shape)
        typer.echo(f"wrote {result['path']} (opset {opset}, keypoints (batch, {shape[0]}, {shape[1]}, {shape[2]}), "
                   f"dynamic batch); max |onnxruntime - PyTorch| = {result['max_abs_diff']:.2e}")
        return
    if model and model_card(model).task == "super-resolution":  # any image size; weights of either layout
        net = create_model(model, **({"pretrained": weights} if weights and not loaded else {})).eval()
        if loaded:
            load_weights(net, loaded[0], metadata=loaded[1], source_name=weights)
        size, in_chans, dynamic = (img_size, img_size) if img_size else model_card(model).input_size[-2:], 3, \
            "dynamic batch, height and width"
    else:
        if weights:
            net, _ = model_from_weights(weights, model, img_size, loaded)
        elif model:
            net = create_model(model, **({"img_size": img_size} if img_size else {})).eval()
        else:
            raise ConvformerError("pass --model NAME and/or --weights FILE")
        size, in_chans, dynamic = (img_size or net.cfg.img_size,) * 2, net.in_chans, "dynamic batch"
    form = optimize_for_export(net, target) if fast else None
    result = export_onnx(net, output, size, in_chans=in_chans, opset=opset, atol=atol, export_form=form)
    typer.echo(f"wrote {result['path']} (opset {opset}, {size[0]}x{size[1]}, {dynamic}); max |onnxruntime - "
               f"PyTorch| = {result['max_abs_diff']:.2e}")
