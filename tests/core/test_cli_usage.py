"""The command line as a new user meets it: every --help shows every default, and a typo or a missing
argument gets the command's usage line and exit code 2 (not a crash report)."""
import dataclasses
import re

import pytest

from convformer.cli import build_command, main


def _leaves(command, path=()):
    subs = getattr(command, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, command


COMMANDS = dict(_leaves(build_command()))
TRAINING = {("train",), ("sr", "train"), ("pose", "train"), ("asr", "train")}


def _expected_defaults(command) -> dict:
    """Option name -> the default its help must show: click's own default, or (options left None so the
    configuration can tell given flags apart) the configuration dataclass's."""
    cls = getattr(command.callback, "config_class", None) or getattr(
        getattr(command.callback, "__wrapped__", None), "config_class", None)
    config = {f.name: f.default for f in dataclasses.fields(cls)} if cls else {}
    out = {}
    for param in command.params:
        if param.name == "help" or getattr(param, "required", False):
            continue
        if isinstance(param.show_default, str):  # a default the help text names ("from the weight file")
            out[param.name] = param.show_default
            continue
        value = param.default if param.default is not None else config.get(param.name)
        if value is None or value is False or value is dataclasses.MISSING or value == ():
            continue  # no default (optional), or an absent flag
        out[param.name] = value
    return out


def test_every_leaf_command_is_seen():
    assert TRAINING <= set(COMMANDS) and ("sr", "upscale") in COMMANDS and ("export",) in COMMANDS
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_shows_every_default(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    command = COMMANDS[path]
    expected = _expected_defaults(command)
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.count("[default:") == len(expected), (sorted(expected), text)
    lines = text.splitlines()
    for param in command.params:
        if param.name not in expected:
            continue
        flag = max(param.opts, key=len)
        row = next(line for line in lines if re.match(rf"^│\s*(\*\s+)?{re.escape(flag)}\s", line))
        assert "[default:" in row, row
        value = expected[param.name]
        if not isinstance(value, bool) and param.default is None and not isinstance(param.show_default, str):
            pytest.fail(f"{flag} has no shown default")
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and \
                not any(ch in (param.help or "") for ch in "[]"):
            assert str(value) in row.split("[default:")[1], row
    if path in TRAINING:  # the configuration's defaults reach the help (the reported fault: "Epochs .")
        assert "Epochs ." not in text and "subjects ." not in text


def test_training_help_values_come_from_the_configuration(capsys, monkeypatch):
    from convformer.pose.config import PoseTrainConfig
    from convformer.vision.config import TrainConfig
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    shown = dict(re.findall(r"│\s*(--[a-z-]+)\s.*?\[default: \(([^)]*)\)\]", text))
    assert int(shown["--epochs"]) == TrainConfig.epochs and float(shown["--lr"]) == TrainConfig.lr
    assert float(shown["--weight-decay"]) == TrainConfig.weight_decay and shown["--model"] == TrainConfig.model
    assert main(["pose", "train", "--help"]) == 0
    assert f"[default: ({PoseTrainConfig.train_subjects})]" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_unknown_option_is_a_usage_error(path, capsys):
    assert main([*path, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert f"Usage: convformer {' '.join(path)}" in err and "No such option: --no-such-option" in err
    assert "this is a bug" not in err


REQUIRED = sorted(p for p, c in COMMANDS.items() if any(getattr(x, "required", False) for x in c.params))


@pytest.mark.parametrize("path", REQUIRED, ids=" ".join)
def test_missing_required_argument_is_a_usage_error(path, capsys):
    assert main(list(path)) == 2
    err = capsys.readouterr().err
    assert f"Usage: convformer {' '.join(path)}" in err and "Missing" in err and "this is a bug" not in err


def test_mistyped_command_and_option_get_a_close_match(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "No such command 'trian'" in err and "train" in err.split("No such command")[1]
    assert main(["train", "--epochz", "3"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["foo"]) == 2 and "Usage: convformer" in capsys.readouterr().err


def test_a_real_bug_is_still_reported_as_one(monkeypatch, capsys):
    import convformer.cli.models as models_cmd
    monkeypatch.setattr(models_cmd, "list_models", lambda *a, **k: 1 / 0)
    assert main(["models"]) == 1
    assert "this is a bug" in capsys.readouterr().err
