"""`convformer sr train`: L1 training that learns, checkpoints, and resumes to identical weights."""
import json

import pytest
import torch
from safetensors.torch import load_file

from convformer.cli import main
from convformer.sr.data import bundled_photo, save_png


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
    sr_mod = importlib.import_module("convformer.sr.task")
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


def test_sr_train_default_data_is_the_bundled_photos_with_held_out_validation(tmp_path):
    """`sr train` with no data flags trains on three bundled photos and validates on the other three; the
    bicubic baseline it logs is the one computed here from those three photos."""
    from safetensors import safe_open
    from convformer.sr.data import bicubic_down, bicubic_up, mod_crop
    from convformer.sr.metrics import psnr_y
    assert main(["sr", "train", "--steps", "1", "--batch-size", "1", "--patch", "8", "--eval-every", "1",
                 "--threads", "2", "--output", str(tmp_path), "--name", "photos", "--quiet"]) == 0
    rows = json.loads((tmp_path / "photos" / "metrics.json").read_text())
    with safe_open(str(tmp_path / "photos" / "last.safetensors"), "pt") as f:
        val_names = json.loads(f.metadata()["val_images"])
    assert val_names == ["chelsea", "immunohistochemistry", "hubble_deep_field"]
    hrs = [mod_crop(bundled_photo(n), 2) for n in val_names]
    expected = sum(psnr_y(bicubic_up(bicubic_down(hr, 2), 2), hr, 2) for hr in hrs) / 3
    assert rows[-1]["bicubic_psnr"] == pytest.approx(expected, abs=1e-3)
