"""`convformer models`: list registered models, filter them, show their cards."""
from __future__ import annotations

import json

import typer

from convformer.errors import ConvformerError
from convformer.registry import list_models, model_card
from convformer.cli.app import app


@app.command()
def models(
    pattern: str = typer.Argument("*", help="Shell-style filter, e.g. 'caformer*'."),
    show: bool = typer.Option(False, "--show", help="Print the full model card of each match."),
    as_json: bool = typer.Option(False, "--json", help="Print the cards as JSON."),
):
    """List models with parameters, MACs and the paper's top-1 (ImageNet-1k, 224)."""
    names = list_models(pattern)
    if not names:
        raise ConvformerError(f"no model matches {pattern!r}; `convformer models` lists all")
    cards = [model_card(n) for n in names]
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in cards], indent=1, default=str))
    elif show:
        typer.echo("\n\n".join(c.describe() for c in cards))
    else:
        typer.echo(f"{'model':<22}{'params (M)':>12}{'GMACs':>8}{'size':>6}{'top-1':>8}")
        for c in cards:
            top1 = c.metrics.get("in1k_224")  # SR and pose cards show their metrics with --show
            size = f"T={c.input_size[0]}" if c.task == "pose" else "1s" if c.task == "speech" else c.input_size[-1]
            typer.echo(f"{c.name:<22}{c.params / 1e6:>12.2f}{c.macs / 1e9:>8.2f}{size:>6}"
                       f"{(f'{top1:.1f}' if top1 else '-'):>8}")
