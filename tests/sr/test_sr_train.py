"""`convformer sr train` through the training engine: it learns, its run folder is the engine's, a killed run
resumes to identical weights, two gloo processes train what one trains, and a NaN loss stops it cleanly."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import Crash, crash_at
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


def _args(sr_data, out, name, steps=6):
    return ["sr", "train", "--data", str(sr_data / "train"), "--val", str(sr_data / "val"), "--steps", str(steps),
            "--batch-size", "2", "--patch", "16", "--eval-every", "3", "--checkpoint-every", "2", "--lr", "1e-3",
            "--threads", "1", "--output", str(out), "--name", name, "--quiet"]


def test_sr_training_killed_and_resumed_matches_an_uninterrupted_run(sr_data, tmp_path, monkeypatch):
    from convformer.sr.task import SuperResolution
    assert main(_args(sr_data, tmp_path, "ref")) == 0
    rows = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [3, 6] and rows[-1]["val_bicubic_psnr"] > 20
    assert rows[-1]["train_loss"] > 0 and rows[-1]["train_l1"] == pytest.approx(rows[-1]["train_loss"], abs=1e-3)
    assert "ema_val_psnr" in rows[-1]  # SR keeps an EMA by default
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert config["task"] == "super-resolution" and config["steps_per_epoch"] == 3 and config["betas"] == [0.9, 0.99]
    assert {"last.safetensors", "best.safetensors", "ema.safetensors", "checkpoint.safetensors",
            "curves.png"} <= {p.name for p in (tmp_path / "ref").iterdir()}

    crash_at(monkeypatch, SuperResolution, 4)  # dies in step 5, after the step-4 checkpoint
    with pytest.raises(Crash):
        main(_args(sr_data, tmp_path, "cut"))
    monkeypatch.undo()
    assert main(["sr", "train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    for weights in ("last", "ema"):
        a = load_file(str(tmp_path / "ref" / f"{weights}.safetensors"))
        b = load_file(str(tmp_path / "cut" / f"{weights}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text()) != [] and \
        [r["step"] for r in json.loads((tmp_path / "cut" / "metrics.json").read_text())] == [3, 6]


def test_sr_nan_loss_stops_naming_the_step(sr_data, tmp_path, monkeypatch, capsys):
    from convformer.sr.task import SuperResolution
    real = SuperResolution.loss
    monkeypatch.setattr(SuperResolution, "loss", lambda self, out, target: real(self, out, target) * float("nan"))
    assert main(_args(sr_data, tmp_path, "nan")) == 2
    err = capsys.readouterr().err
    assert "loss became nan at epoch 1, step 1" in err and "--skip-nonfinite" in err
    assert not (tmp_path / "nan" / "last.safetensors").exists()


def test_sr_train_bad_input_is_a_one_line_error(sr_data, tmp_path, capsys):
    assert main(["sr", "train", "--model", "convformer_s18", "--output", str(tmp_path)]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err
    assert main(["sr", "train", "--data", str(sr_data / "train"), "--output", str(tmp_path)]) == 2
    assert "pass --val" in capsys.readouterr().err
    assert main(["sr", "train", "--train-photos", "moon", "--output", str(tmp_path)]) == 2
    assert "--train-photos must name bundled photos" in capsys.readouterr().err
    assert main(_args(sr_data, tmp_path, "odd", steps=5)) == 2
    assert "must be a positive multiple of --eval-every" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()


class _Bicubic(torch.nn.Module):
    """A stand-in SR model: plain bicubic upsampling (cheap on the full-size validation photos)."""
    scale = 2

    def forward(self, lr):
        from convformer.sr.data import bicubic_up
        return bicubic_up(lr, 2)


def test_sr_default_data_is_the_bundled_photos_with_held_out_validation():
    """With no data flags the task trains on three bundled photos and validates on the other three, and its
    validation scores a model on those photos exactly as PSNR is computed here."""
    from torch.utils.data import DataLoader
    from convformer.sr.config import SRTrainConfig
    from convformer.sr.data import bicubic_down, bicubic_up, mod_crop
    from convformer.sr.metrics import psnr_y
    task = SRTrainConfig(steps=1, eval_every=1, batch_size=1, patch=8).task()
    data = task.build(SRTrainConfig(steps=1, eval_every=1, batch_size=1, patch=8), progress=False)
    val_names = json.loads(data.meta["val_images"])
    assert val_names == ["chelsea", "immunohistochemistry", "hubble_deep_field"]
    assert len(data.train) == 1 and data.train[0][0].shape == (3, 8, 8) and data.train[0][1].shape == (3, 16, 16)
    hrs = [mod_crop(bundled_photo(n), 2) for n in val_names]
    expected = sum(psnr_y(bicubic_up(bicubic_down(hr, 2), 2), hr, 2) for hr in hrs) / 3
    val = task.evaluate(_Bicubic(), DataLoader(data.val, batch_size=8, collate_fn=data.val_collate), "cpu")
    assert val["count"] == 3
    assert val["bicubic_psnr"] == pytest.approx(expected, abs=1e-4) and val["psnr"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_sr_train_cli_default_data_logs_the_bicubic_baseline_of_the_held_out_photos(tmp_path):
    from convformer.sr.data import bicubic_down, bicubic_up, mod_crop
    from convformer.sr.metrics import psnr_y
    assert main(["sr", "train", "--steps", "1", "--batch-size", "1", "--patch", "8", "--eval-every", "1",
                 "--ema-decay", "0", "--threads", "2", "--output", str(tmp_path), "--name", "photos", "--quiet"]) == 0
    rows = json.loads((tmp_path / "photos" / "metrics.json").read_text())
    hrs = [mod_crop(bundled_photo(n), 2) for n in ("chelsea", "immunohistochemistry", "hubble_deep_field")]
    expected = sum(psnr_y(bicubic_up(bicubic_down(hr, 2), 2), hr, 2) for hr in hrs) / 3
    assert rows[-1]["val_bicubic_psnr"] == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_for_sr(sr_data, tmp_path):
    """SR under torchrun: the patches are drawn per sample, so two processes with half the batch each see
    the same global batches as one process, and end with the same weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    common = ["sr", "train", "--data", str(sr_data / "train"), "--val", str(sr_data / "val"), "--steps", "2",
              "--eval-every", "2", "--patch", "16", "--lr", "1e-3", "--threads", "1", "--quiet",
              "--output", str(tmp_path)]
    one = subprocess.run([sys.executable, "-m", "convformer", *common, "--batch-size", "4", "--name", "one"],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(31500 + os.getpid() % 1000), "-m", "convformer", *common, "--batch-size", "2",
                          "--name", "two"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    r1 = json.loads((tmp_path / "one" / "metrics.json").read_text())[-1]
    r2 = json.loads((tmp_path / "two" / "metrics.json").read_text())[-1]
    assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-4)
    assert r1["val_psnr"] == pytest.approx(r2["val_psnr"], abs=1e-3)


def test_a_run_folder_not_written_by_the_engine_is_refused_on_resume(sr_data, tmp_path, capsys):
    """SR runs of the loop before 0.2 have no task in their config.json; resuming one says so (exit 2)."""
    assert main(_args(sr_data, tmp_path, "old", steps=3)) == 0
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["task"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert main(["sr", "train", "--resume", str(tmp_path / "old"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not written by the training engine" in err and "--pretrained" in err
