"""The `convformer` command: the embedded training run, eval, predict, models, and bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import convformer
from convformer.cli import main
from convformer.vision.data import load_digits_tensors


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A short real training run of the default model on the bundled digits."""
    out = tmp_path_factory.mktemp("runs")
    code = main(["train", "--epochs", "4", "--warmup-epochs", "0.5", "--output", str(out), "--name", "r",
                 "--quiet"])
    assert code == 0
    return out / "r"


def test_train_writes_a_complete_run_folder(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    assert {"config.json", "metrics.csv", "metrics.json", "curves.png", "last.safetensors",
            "best.safetensors"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((digits_run / "config.json").read_text())
    assert config["model"] == "convformer_nano" and config["img_size"] == 32 and config["epochs"] == 4
    rows = json.loads((digits_run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_top1"] > 60.0  # ten classes: chance is 10%
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (digits_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_reproduces_the_training_accuracy(digits_run, capsys):
    rows = json.loads((digits_run / "metrics.json").read_text())
    assert main(["eval", str(digits_run / "last.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["count"] == 360
    assert result["top1"] == pytest.approx(rows[-1]["val_top1"], abs=1e-3)
    assert main(["eval", str(digits_run / "last.safetensors"), "--json", "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fast["fast"] and fast["top1"] == pytest.approx(result["top1"], abs=0.3)  # at most one image flips
    assert fast["loss"] == pytest.approx(result["loss"], rel=1e-4)
    # another runtime: the graph built for ONNX Runtime, the same loss and accuracy
    assert main(["eval", str(digits_run / "last.safetensors"), "--json", "--runtime", "onnxruntime"]) == 0
    ort = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ort["runtime"] == "onnxruntime" and ort["top1"] == pytest.approx(result["top1"], abs=0.3)
    assert ort["loss"] == pytest.approx(result["loss"], rel=1e-4)
    assert main(["eval", str(digits_run / "last.safetensors"), "--runtime", "tensorrt"]) == 2
    assert "runtime must be one of torch, onnxruntime, openvino, auto" in capsys.readouterr().err


def test_predict_labels_digit_images(digits_run, tmp_path, capsys):
    _, _, images, labels = load_digits_tensors(32)
    paths = []
    for i in range(20):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((images[i, 0] * 255).byte().numpy()).save(path)
        paths.append(str(path))
    assert main(["predict", *paths, "--weights", str(digits_run / "best.safetensors"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 20 and all(len(r["top"]) == 5 for r in results)
    top1 = [int(r["top"][0]["label"]) for r in results]
    assert sum(p == int(t) for p, t in zip(top1, labels[:20])) >= 12
    assert all(abs(sum(p["prob"] for p in r["top"]) - 1) < 0.2 or r["top"][0]["prob"] > 0.3 for r in results)
    assert main(["predict", *paths, "--weights", str(digits_run / "best.safetensors"), "--json", "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out)
    for a, b in zip(results, fast):
        assert [p["index"] for p in a["top"]][:1] == [p["index"] for p in b["top"]][:1]
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-3)


def test_imagenet_class_names_offline():
    from convformer.vision.inference import imagenet_classes
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"


def test_models_list_filter_and_card(capsys):
    assert main(["models", "caformer*"]) == 0
    out = capsys.readouterr().out
    assert "caformer_s18" in out and "convformer_s18" not in out and "83.6" in out
    assert main(["models", "convformer_s18", "--show"]) == 0
    out = capsys.readouterr().out
    assert "26,774,448" in out and "timm/convformer_s18.sail_in1k" in out and "1e-5" in out
    assert main(["models", "--json", "randformer_s12"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["frozen_params"] == 235298


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    weights = convformer.save_weights(convformer.create_model("convformer_nano", num_classes=10),
                                      tmp_path / "nano.safetensors")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a picture")
    assert main(["predict", str(not_image), "--weights", str(weights)]) == 2
    assert "not an image file" in _one_line_error(capsys)

    assert main(["predict", str(tmp_path / "missing.png"), "--weights", str(weights)]) == 2
    assert "image not found" in _one_line_error(capsys)

    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    assert "weight file not found" in _one_line_error(capsys)

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(weights.read_bytes()[:1000])
    assert main(["eval", str(truncated)]) == 2
    assert "not a valid safetensors file" in _one_line_error(capsys)

    other = convformer.save_weights(convformer.create_model("poolformerv2_s12"), tmp_path / "pool.safetensors")
    assert main(["eval", str(other), "--model", "convformer_nano"]) == 2
    assert "does not fit convformer_nano" in _one_line_error(capsys)

    assert main(["train", "--data", str(tmp_path / "no_such_folder"), "--output", str(tmp_path)]) == 2
    assert "data folder not found" in _one_line_error(capsys)

    assert main(["train", "--model", "nosuchformer_s12", "--output", str(tmp_path)]) == 2
    assert "unknown model" in _one_line_error(capsys)

    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 3\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(config), "--output", str(tmp_path)]) == 2
    assert "unknown option(s) ['learning_rate']" in _one_line_error(capsys)


def test_console_script_exit_code_and_debug(tmp_path):
    exe = Path(sys.executable).parent / "convformer"
    missing = str(tmp_path / "nothing.safetensors")
    run = subprocess.run([str(exe), "eval", missing], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "weight file not found" in run.stderr
    debug = subprocess.run([str(exe), "--debug", "eval", missing], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_image_folder_training_and_class_mismatch(tmp_path, capsys):
    torch.manual_seed(0)
    _colour_folders(tmp_path / "data")
    code = main(["train", "--data", str(tmp_path / "data"), "--model", "convformer_nano", "--img-size", "32",
                 "--epochs", "1", "--batch-size", "4", "--output", str(tmp_path / "runs"), "--name", "f", "--quiet"])
    assert code == 0
    assert json.loads((tmp_path / "runs" / "f" / "config.json").read_text())["classes"] == ["blue", "red"]
    (tmp_path / "data" / "val" / "green").mkdir()
    Image.new("RGB", (40, 40), (0, 200, 0)).save(tmp_path / "data" / "val" / "green" / "0.png")
    assert main(["train", "--data", str(tmp_path / "data"), "--epochs", "1", "--output", str(tmp_path / "runs")]) == 2
    assert "class folders differ" in _one_line_error(capsys)


def test_bf16_channels_last_checkpointed_training_learns_digits(tmp_path):
    # one epoch: bf16 matmuls are slow on CPUs without AVX-512-BF16/AMX
    code = main(["train", "--epochs", "1", "--warmup-epochs", "0.2", "--batch-size", "32", "--precision", "bf16",
                 "--channels-last",
                 "--grad-checkpointing", "--output", str(tmp_path), "--name", "b", "--quiet"])
    assert code == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["precision"] == "bf16" and config["channels_last"] and config["grad_checkpointing"]
    rows = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert rows[-1]["val_top1"] > 30.0  # chance is 10%


def test_unknown_precision_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--precision", "fp8", "--output", str(tmp_path)]) == 2
    assert "precision must be" in _one_line_error(capsys)
    assert not any(tmp_path.iterdir())  # no run folder left behind


def _colour_folders(root: Path, per_class: int = 4) -> Path:
    for split in ("train", "val"):
        for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                noise = (torch.rand(40, 40, 3) * 30).byte().numpy()
                Image.fromarray((noise + torch.tensor(colour).byte().numpy()).clip(0, 255)).save(folder / f"{i}.png")
    return root


def test_log_output_is_one_line_per_epoch_outside_a_terminal(tmp_path):
    data = _colour_folders(tmp_path / "data")
    exe = Path(sys.executable).parent / "convformer"
    env = {k: v for k, v in os.environ.items() if k != "CONVFORMER_PROGRESS"}
    run = subprocess.run([str(exe), "train", "--data", str(data), "--model", "convformer_nano", "--img-size", "32",
                          "--epochs", "3", "--batch-size", "2", "--threads", "1", "--output", str(tmp_path / "runs")],
                         capture_output=True, text=True, env=env)  # pipes: not a terminal
    assert run.returncode == 0, run.stderr
    log = run.stdout + run.stderr
    assert "\r" not in log, "a progress bar was redrawn into the log"
    epoch_lines = [line for line in log.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 3, log
    assert len(log.splitlines()) < 15, log


def test_progress_bars_follow_the_terminal_and_the_override(monkeypatch):
    from convformer import progress
    monkeypatch.delenv("CONVFORMER_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress.progress_bar(range(3)).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not progress.progress_bar(range(3)).disable
    assert progress.progress_bar(range(3), disable=True).disable
    monkeypatch.setenv("CONVFORMER_PROGRESS", "0")
    assert progress.progress_bar(range(3)).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("CONVFORMER_PROGRESS", "1")
    assert not progress.progress_bar(range(3)).disable
