"""The root ``convformer`` Typer app that every command module adds its command to."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convolutional transformers: train, evaluate, predict and inspect models.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    """convformer: MetaFormer-family models, exactly as the papers define them."""
