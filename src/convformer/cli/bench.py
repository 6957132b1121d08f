"""`convformer bench`: throughput, latency, training speed and %-of-peak, ours beside peers."""
from __future__ import annotations

from typing import List, Optional

import typer

from convformer.bench.candidates import RUNTIME_VARIANTS
from convformer.bench.runner import format_table, run_benchmark, write_report
from convformer.errors import ConvformerError
from convformer.cli.app import app


@app.command()
def bench(
    specs: Optional[List[str]] = typer.Argument(None, help="Candidates: NAME, NAME@fast, NAME@fast-bf16, NAME@compile, "
                                                          "NAME@ort|@ov|@auto|@ort-int8, timm:NAME[@compile|@bf16], "
                                                          "onnx:NAME[@fast|@ort], onnx:timm:NAME, ov:NAME[@fast|@ort], "
                                                          "ov:timm:NAME, onnx:NAME@official (the authors' ONNX file, "
                                                          "e.g. CFSR)."),
    img_size: Optional[str] = typer.Option(None, help="Input size, N or HxW (e.g. 180x320) [default: the first "
                                                      "model's: 224, or the LR size of a 1280x720 output]."),
    batch: int = typer.Option(32, help="Batch size for throughput."),
    repeats: Optional[int] = typer.Option(None, help="Timed runs per candidate (median reported) [default: 5; "
                                                     "2 with --quick]."),
    warmup: int = typer.Option(2, help="Untimed warm-up runs."),
    threads: Optional[int] = typer.Option(None, help="CPU threads [default: PyTorch's]."),
    train: bool = typer.Option(False, "--train", help="Also time training steps (eager candidates)."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="Measure peak memory (each candidate in its own process)."),
    output: Optional[str] = typer.Option(None, help="Write JSON here (and a PNG beside it)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Load our models' published weights (as the "
                                                                "authors' ONNX files have)."),
    leaderboard: bool = typer.Option(False, "--leaderboard", help="Rank models by speed at their published "
                                                                  "ImageNet top-1 (the default list, or SPECS / "
                                                                  "--models); no memory or training runs."),
    models: Optional[List[str]] = typer.Option(None, help="Leaderboard entries instead of the default list "
                                                          "(repeat, or comma-separated)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer timed runs (1 warm-up, 2 repeats): a rough ranking."),
    runtime: str = typer.Option("torch", help="Run our plain NAME candidates in this runtime: torch (as named), "
                                              "onnxruntime (NAME@ort), openvino (NAME@ov) or auto (NAME@auto)."),
):
    """Measure candidates interleaved in one run; print a table, optionally write JSON + plot."""
    progress = lambda msg: typer.echo(f"... {msg}", err=True)  # noqa: E731
    if runtime not in RUNTIME_VARIANTS:
        raise ConvformerError(f"--runtime must be one of {', '.join(RUNTIME_VARIANTS)}, got {runtime!r}")
    suffix = "@" + RUNTIME_VARIANTS[runtime] if RUNTIME_VARIANTS[runtime] else ""
    specs = [s + suffix if ":" not in s and "@" not in s else s for s in specs or []]
    repeats, warmup = (repeats or 2, 1) if quick else (repeats or 5, warmup)
    png = None if not output else output[:-5] + ".png" if output.endswith(".json") else output + ".png"
    if leaderboard or models:
        _leaderboard(list(specs or []) + [m for group in models or [] for m in group.split(",") if m],
                     img_size, batch, repeats, warmup, threads, output, png, progress)
        return
    if not specs:
        raise ConvformerError("name the candidates to benchmark (e.g. `convformer bench convformer_s18 "
                              "timm:convformer_s18`), or pass --leaderboard")
    report = run_benchmark(specs, img_size, batch, repeats, warmup, threads, train, memory=memory,
                           progress=progress, pretrained=pretrained)
    typer.echo(format_table(report))
    if output:
        write_report(report, output, png)
        typer.echo(f"wrote {output} and {png}")


def _leaderboard(specs, img_size, batch, repeats, warmup, threads, output, png, progress) -> None:
    """The leaderboard: default entries unless specs are named; their published top-1 travels along."""
    from convformer.bench.leaderboard import entry_for, format_leaderboard, run_leaderboard, write_leaderboard
    entries = [entry_for(spec) for spec in specs] or None
    report = run_leaderboard(entries, img_size or 224, batch, repeats, warmup, threads, progress)
    typer.echo(format_leaderboard(report))
    if output:
        write_leaderboard(report, output, png)
        typer.echo(f"wrote {output} and {png}")
