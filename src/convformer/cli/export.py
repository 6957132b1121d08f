"""`convformer export`: ONNX export (dynamic batch) verified in onnxruntime."""
from __future__ import annotations

from typing import Optional

import typer

from ..errors import ConvformerError
from ..export import export_onnx
from ..optimize import optimize
from ..registry import create_model
from . import app
from .evaluate import model_from_weights


@app.command()
def export(
    output: str = typer.Argument(..., help="The .onnx file to write."),
    weights: Optional[str] = typer.Option(None, help="Weight file; without it the model's fresh init."),
    model: Optional[str] = typer.Option(None, help="Model name [default: from the weight file]."),
    img_size: Optional[int] = typer.Option(None, help="Input size [default: the model's]."),
    opset: int = typer.Option(17, help="ONNX opset."),
    atol: float = typer.Option(1e-4, help="Largest allowed |onnxruntime - PyTorch| difference."),
    fast: bool = typer.Option(False, "--fast", help="Export the folded inference model (convformer.optimize)."),
):
    """Export to ONNX and check onnxruntime's outputs against PyTorch's."""
    if weights:
        net, _ = model_from_weights(weights, model, img_size)
    elif model:
        net = create_model(model, **({"img_size": img_size} if img_size else {})).eval()
    else:
        raise ConvformerError("pass --model NAME and/or --weights FILE")
    size = img_size or net.cfg.img_size
    if fast:
        net = optimize(net)
    result = export_onnx(net, output, size, in_chans=net.in_chans, opset=opset, atol=atol)
    typer.echo(f"wrote {result['path']} (opset {opset}, {size}x{size}, dynamic batch); max |onnxruntime - "
               f"PyTorch| = {result['max_abs_diff']:.2e}")
