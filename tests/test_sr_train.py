"""`convformer sr train`: L1 training that learns, checkpoints, and resumes to identical weights."""
import json

import pytest
import torch
from safetensors.torch import load_file

from convformer.cli import main
from convformer.data.sr import bundled_photo, save_png


@pytest.fixture(scope="module")
def sr_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("srdata")
    photo = bundled_photo("astronaut")
    for i, (y, x) in enumerate([(0, 0), (64, 200), (300, 300)]):
        save_png(photo[:, :, y:y + 64, x:x + 64], root / "train" / f"{i}.png")
    save_png(bundled_photo("coffee")[:, :, 100:148, 200:248], root / "val" / "coffee.png")
    return root


def _args(sr_data, out, name):
    return ["sr", "train", "--data", str(sr_data / "train"), "--val", str(sr_data / "val"), "--steps", "6",
            "--batch-size", "2", "--patch", "16", "--eval-every", "3", "--checkpoint-every", "2", "--lr", "1e-3",
            "--threads", "1", "--output", str(out), "--name", name, "--quiet"]


def test_sr_training_interrupted_and_resumed_matches_an_uninterrupted_run(sr_data, tmp_path, monkeypatch):
    assert main(_args(sr_data, tmp_path, "ref")) == 0
    rows = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [3, 6] and rows[-1]["bicubic_psnr"] > 20
    assert rows[-1]["train_l1"] > 0

    import importlib
    sr_mod = importlib.import_module("convformer.engine.sr")
    real, calls = sr_mod.random_patches, []

    def dies_at_step_five(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the process is stopped after the step-4 checkpoint
        return real(*a, **k)
    monkeypatch.setattr(sr_mod, "random_patches", dies_at_step_five)
    assert main(_args(sr_data, tmp_path, "cut")) == 130
    monkeypatch.setattr(sr_mod, "random_patches", real)
    assert main(["sr", "train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    a, b = load_file(str(tmp_path / "ref" / "last.safetensors")), load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sr_train_bad_input_is_a_one_line_error(sr_data, tmp_path, capsys):
    assert main(["sr", "train", "--model", "convformer_s18", "--output", str(tmp_path)]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err
    assert main(["sr", "train", "--data", str(sr_data / "train"), "--output", str(tmp_path)]) == 2
    assert "pass --val" in capsys.readouterr().err
    assert main(["sr", "train", "--train-photos", "moon", "--output", str(tmp_path)]) == 2
    assert "--train-photos must name bundled photos" in capsys.readouterr().err
