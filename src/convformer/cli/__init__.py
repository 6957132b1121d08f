"""The ``convformer`` command: the cross-system commands (modules here) and each system's commands.

Exit codes: 0 success; 2 a usage error (unknown command or option, missing argument: the command's usage
line and a close match, as click prints them) or a user-facing problem (ConvformerError: one line);
130 interrupted; 1 a bug (an unexpected exception). ``--debug`` (anywhere on the command line) shows
the full traceback instead of the one line.
"""
from __future__ import annotations

import dataclasses
import re
import sys

import typer

from convformer.cli import bench, export, models  # noqa: F401  (register the cross-system commands)
from convformer.cli.app import app
from convformer.errors import ConvformerError
from convformer.asr import cli as asr_cli
from convformer.pose import cli as pose_cli
from convformer.sr import cli as sr_cli
from convformer.vision import cli as vision_cli

# each system's commands, mounted under its name (the systems know nothing of this app); the image
# commands (train, eval, predict) are the app's top-level ones
app.add_typer(vision_cli.app)
app.add_typer(sr_cli.app, name="sr")
app.add_typer(pose_cli.app, name="pose")
app.add_typer(asr_cli.app, name="asr")


def _error_types():
    """typer's (vendored) click exceptions, and click's own where an older typer uses it."""
    usage, exits, aborts = [typer.TyperException], [typer.Exit], [typer.Abort]
    try:
        import click
        usage.append(click.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover - typer without click installed
        pass
    return tuple(usage), tuple(exits), tuple(aborts)


USAGE_ERRORS, EXITS, ABORTS = _error_types()
_DEFAULT_NOTE = re.compile(r"\s*\[default: ([^\]]*)\]")


def _show_value(value) -> str:
    if isinstance(value, bool):
        return "on"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _config_defaults(callback) -> dict:
    """The defaults of the configuration class a training command resolves (see ``options.uses_config``)."""
    cls = getattr(callback, "config_class", None) or getattr(getattr(callback, "__wrapped__", None),
                                                             "config_class", None)  # see options.uses_config
    if cls is None:
        return {}
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def show_defaults(command) -> None:
    """Make every option's help show its default. Options of training commands default to None (so that
    the configuration can tell given flags apart); their real default is the configuration dataclass's,
    shown from there. A help text's own "[default: ...]" note, which the rich help renderer would read as
    markup and drop, becomes the shown default; other square brackets are escaped."""
    for sub in getattr(command, "commands", {}).values():
        show_defaults(sub)
    defaults = _config_defaults(command.callback) if command.callback else {}
    for param in command.params:
        help_text = getattr(param, "help", None) or ""
        note = _DEFAULT_NOTE.search(help_text)
        help_text = _DEFAULT_NOTE.sub("", help_text)
        value = defaults.get(param.name)
        if param.default is None and not getattr(param, "required", False):
            if not (value is None or value is False or value == ""):  # (an absent flag is off: nothing to show)
                # the configuration is the one source of a default; a note may only add to it
                shown = _show_value(value)
                param.show_default = note.group(1) if note and _same(note.group(1), value) else shown
            elif note:
                param.show_default = note.group(1)
        if hasattr(param, "help"):
            param.help = help_text.replace("[", r"\[")


def _same(note: str, value) -> bool:
    """Whether a help note such as "0.1; paper 0.2" starts with the configuration's value."""
    first = re.split(r"[;, ]", note.strip(), maxsplit=1)[0]
    try:
        return float(first) == float(value)
    except (TypeError, ValueError):
        return first == _show_value(value)


def build_command():
    """The click command of the whole app, with its help defaults filled in."""
    command = typer.main.get_command(app)
    show_defaults(command)
    return command


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = build_command().main(args=args, prog_name="convformer", standalone_mode=False)
        if isinstance(code, int) and code:  # Exit codes (130 on Ctrl-C) may come back instead of raising
            if code == 130:
                print("interrupted", file=sys.stderr)
            return code
    except ConvformerError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except EXITS as err:
        return err.exit_code
    except USAGE_ERRORS as err:  # unknown command or option, missing argument: the usage line, exit 2
        err.show()  # (not a bug, so no traceback even with --debug)
        return 2
    except (*ABORTS, KeyboardInterrupt):
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
