"""The ``convformer`` command: one sub-command per module in this package.

User-facing problems (ConvformerError) print one line and exit with code 2; ``--debug`` (anywhere on
the command line) shows the full traceback instead.
"""
from __future__ import annotations

import sys

import click
import typer

from ..errors import ConvformerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convolutional transformers: train, evaluate, predict and inspect models.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    """convformer: MetaFormer-family models, exactly as the papers define them."""


from . import asr, bench, evaluate, export, models, pose, predict, sr, train  # noqa: E402,F401  (register sub-commands)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="convformer", standalone_mode=False)
        if isinstance(code, int) and code:  # typer returns Exit codes (130 on Ctrl-C) instead of raising
            if code == 130:
                print("interrupted", file=sys.stderr)
            return code
    except ConvformerError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    except click.ClickException as err:
        err.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"error: unexpected {type(err).__name__}: {err} (this is a bug; rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return 1
    return 0


def _entry() -> None:
    sys.exit(main())
