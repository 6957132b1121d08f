"""`convformer bench`: throughput, latency, training speed and %-of-peak, ours beside peers."""
from __future__ import annotations

from typing import List, Optional

import typer

from ..bench.runner import format_table, run_benchmark, write_report
from . import app


@app.command()
def bench(
    specs: List[str] = typer.Argument(..., help="Candidates: NAME, NAME@fast, NAME@fast-bf16, NAME@compile, "
                                                "timm:NAME[@compile|@bf16], onnx:NAME, onnx:timm:NAME, "
                                                "onnx:NAME@official (the authors' ONNX file, e.g. CFSR)."),
    img_size: Optional[str] = typer.Option(None, help="Input size, N or HxW (e.g. 180x320) [default: the first "
                                                      "model's: 224, or the LR size of a 1280x720 output]."),
    batch: int = typer.Option(32, help="Batch size for throughput."),
    repeats: int = typer.Option(5, help="Timed runs per candidate (median reported)."),
    warmup: int = typer.Option(2, help="Untimed warm-up runs."),
    threads: Optional[int] = typer.Option(None, help="CPU threads [default: PyTorch's]."),
    train: bool = typer.Option(False, "--train", help="Also time training steps (eager candidates)."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="Measure peak memory (each candidate in its own process)."),
    output: Optional[str] = typer.Option(None, help="Write JSON here (and a PNG beside it)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Load our models' published weights (as the "
                                                                "authors' ONNX files have)."),
):
    """Measure candidates interleaved in one run; print a table, optionally write JSON + plot."""
    report = run_benchmark(specs, img_size, batch, repeats, warmup, threads, train, memory=memory,
                           progress=lambda msg: typer.echo(f"... {msg}", err=True), pretrained=pretrained)
    typer.echo(format_table(report))
    if output:
        png = output[:-5] + ".png" if output.endswith(".json") else output + ".png"
        write_report(report, output, png)
        typer.echo(f"wrote {output} and {png}")
