"""Training that never loses work: exact resume after SIGKILL, DDP equals one process, and every bad
input a clear one-line error with nothing overwritten."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import convformer
from convformer.cli import main

FAST = ["--epochs", "2", "--batch-size", "32", "--threads", "1", "--warmup-epochs", "0.5", "--quiet"]
# every source of randomness on: augmentation, drop path, Mixup/CutMix, random erasing, EMA
RANDOM = ["--drop-path-rate", "0.1", "--mixup", "0.2", "--cutmix", "1.0", "--random-erasing", "0.25",
          "--ema-decay", "0.99"]
CLI = [sys.executable, "-m", "convformer"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    return err


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow  # five processes, real SIGKILLs (about 2 min); make test keeps the in-process crash tests
def test_run_killed_at_random_steps_resumes_to_bit_identical_weights(tmp_path):
    args = FAST + RANDOM + ["--deterministic", "--output", str(tmp_path)]
    ref = subprocess.run(CLI + ["train", *args, "--name", "ref"], env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    ckpt = run / "checkpoint.safetensors"
    rng = random.Random(1)
    kills = 0
    cmd = CLI + ["train", *args, "--name", "killed", "--checkpoint-every", "1"]
    for attempt in range(3):
        proc = subprocess.Popen(cmd if attempt == 0 else CLI + ["train", "--resume", str(run), "--threads", "1",
                                                                "--quiet"],
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait for a fresh checkpoint, then a bit more
            if ckpt.exists() and ckpt.stat().st_mtime_ns != seen:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2  # the run really was killed part-way, more than once
    done = subprocess.run(CLI + ["train", "--resume", str(run), "--threads", "1", "--quiet"], env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _same_weights(tmp_path / "ref" / "last.safetensors", run / "last.safetensors")
    assert _same_weights(tmp_path / "ref" / "ema.safetensors", run / "ema.safetensors")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(json.loads((run / "metrics.json").read_text())) == \
        strip(json.loads((tmp_path / "ref" / "metrics.json").read_text()))
    assert not list(run.glob(".*.tmp"))


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    common = ["--epochs", "1", "--warmup-epochs", "0.3", "--drop-path-rate", "0", "--threads", "1", "--quiet",
              "--output", str(tmp_path)]
    one = subprocess.run(CLI + ["train", *common, "--batch-size", "32", "--name", "one"], env=_env(),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + os.getpid() % 1000), "-m", "convformer", "train", *common, "--batch-size", "16",
                          "--name", "two"], env=_env(), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["world_size"] == 2
    r1 = json.loads((tmp_path / "one" / "metrics.json").read_text())[-1]
    r2 = json.loads((tmp_path / "two" / "metrics.json").read_text())[-1]
    assert r1["val_top1"] == pytest.approx(r2["val_top1"], abs=0.3)  # val metrics reduced over both ranks
    assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-4)


class _NanAt(torch.nn.Module):
    """Wraps a model; its forward returns NaN logits on training call number ``at``."""

    def __init__(self, model, at):
        super().__init__()
        self.inner, self.at, self.calls = model, at, 0

    def forward(self, x):
        self.calls += self.training
        out = self.inner(x)
        return out * float("nan") if self.training and self.calls == self.at else out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def _patch_nan(monkeypatch, at):
    import importlib
    train_mod = importlib.import_module("convformer.engine.train")  # the module, not the function
    real = train_mod.create_model
    monkeypatch.setattr(train_mod, "create_model", lambda *a, **k: _NanAt(real(*a, **k), at))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    steps_per_epoch = 1437 // 64
    _patch_nan(monkeypatch, steps_per_epoch + 3)  # third step of epoch 2
    code = main(["train", "--epochs", "2", "--threads", "1", "--output", str(tmp_path), "--name", "n", "--quiet"])
    assert code == 2
    err = _one_line_error(capsys)
    assert f"step {steps_per_epoch + 3}" in err and "epoch 2" in err and "--skip-nonfinite" in err
    rows = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1]  # epoch 1's results and checkpoint are intact
    state = load_file(str(tmp_path / "n" / "checkpoint.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())


def test_skip_nonfinite_skips_the_bad_step_and_finishes(tmp_path, monkeypatch, capsys):
    _patch_nan(monkeypatch, 4)
    code = main(["train", "--epochs", "1", "--threads", "1", "--output", str(tmp_path), "--name", "s", "--quiet",
                 "--skip-nonfinite"])
    assert code == 0
    row = json.loads((tmp_path / "s" / "metrics.json").read_text())[-1]
    assert row["skipped_steps"] == 1 and row["train_loss"] == row["train_loss"]  # finite
    weights = load_file(str(tmp_path / "s" / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def _folder(tmp_path, n=3):
    torch.manual_seed(0)
    for split in ("train", "val"):
        for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (36, 36), colour).save(d / f"{i}.png")
    return tmp_path / "data"


def test_corrupt_and_non_image_files_are_named_or_skipped(tmp_path, capsys):
    data = _folder(tmp_path)
    good = (data / "train" / "red" / "0.png").read_bytes()
    (data / "train" / "red" / "broken.png").write_bytes(good[: len(good) // 2])
    (data / "train" / "blue" / "notes.jpg").write_text("not an image")
    args = ["train", "--data", str(data), "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--threads", "1",
            "--output", str(tmp_path / "runs"), "--quiet"]
    assert main(args + ["--name", "x"]) == 2
    err = _one_line_error(capsys)
    assert ("broken.png" in err or "notes.jpg" in err) and "and 1 more" in err and "--skip-bad-images" in err
    assert not (tmp_path / "runs" / "x").exists()  # stopped before anything was written
    with pytest.warns(UserWarning, match="skipping 2 unreadable"):
        assert main(args + ["--name", "y", "--skip-bad-images"]) == 0
    assert (tmp_path / "runs" / "y" / "last.safetensors").exists()


def test_empty_class_folder_is_a_clear_error(tmp_path, capsys):
    data = _folder(tmp_path)
    (data / "train" / "green").mkdir()
    (data / "val" / "green").mkdir()
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "runs")]) == 2
    assert "green has no image files" in _one_line_error(capsys)


def test_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import errno
    from convformer.engine.state import read_train_state
    from convformer.weights import io as wio
    real, writes = wio.save_file, []

    def fill_disk_on_second_checkpoint(tensors, path, metadata=None):
        if (metadata or {}).get("kind", "").startswith("convformer-train-state"):
            writes.append(path)
            if len(writes) == 2:
                real(dict(list(tensors.items())[:1]), path, metadata=metadata)  # part of the file, then: full
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata=metadata)
    monkeypatch.setattr(wio, "save_file", fill_disk_on_second_checkpoint)
    args = ["train", "--epochs", "2", "--threads", "1", "--output", str(tmp_path), "--name", "d", "--quiet"]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "No space left on device" in err and "nothing was overwritten" in err
    run = tmp_path / "d"
    _, meta = read_train_state(run)
    assert json.loads(meta["info"])["epoch"] == 2  # still the complete checkpoint written after epoch 1
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(wio, "save_file", real)  # space freed: the run resumes from that checkpoint
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]


def test_resume_errors_other_model_and_weights_only_file(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--threads", "1", "--output", str(tmp_path), "--name", "r",
                 "--quiet"]) == 0
    run = tmp_path / "r"
    assert main(["train", "--resume", str(run), "--model", "convformer_s18"]) == 2
    assert "trained with 'convformer_nano'" in _one_line_error(capsys)
    assert main(["train", "--resume", str(run / "best.safetensors")]) == 2
    assert "not a training checkpoint" in _one_line_error(capsys)
    assert main(["train", "--output", str(tmp_path), "--name", "r"]) == 2
    assert "--resume" in _one_line_error(capsys)  # an existing run folder is never overwritten
    # resuming a finished run is a no-op that changes nothing
    before = (run / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "last.safetensors").read_bytes() == before


def test_fine_tuning_from_pretrained_weights_with_a_new_head(tmp_path, capsys):
    torch.manual_seed(5)
    source = convformer.create_model("convformer_nano", num_classes=1000, img_size=32)
    convformer.save_weights(source, tmp_path / "pre.safetensors")
    assert main(["train", "--pretrained", str(tmp_path / "pre.safetensors"), "--num-classes", "10", "--epochs", "1",
                 "--lr", "1e-4", "--threads", "1", "--output", str(tmp_path), "--name", "ft", "--quiet"]) == 0
    tuned = load_file(str(tmp_path / "ft" / "last.safetensors"))
    pre = source.state_dict()
    fresh = convformer.create_model("convformer_nano", num_classes=10, img_size=32).state_dict()
    key = "stages.0.blocks.0.mlp.fc1.weight"
    assert (tuned[key] - pre[key]).norm() < 0.5 * (tuned[key] - fresh[key]).norm()  # started from the file
    assert tuned["head.fc.fc2.bias"].shape == (10,)  # a new 10-class head
    assert main(["train", "--num-classes", "7", "--epochs", "1", "--output", str(tmp_path)]) == 2
    assert "has 10 classes" in _one_line_error(capsys)


def test_tensorboard_logs_and_run_folder_records_the_environment(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert main(["train", "--epochs", "1", "--threads", "1", "--output", str(tmp_path), "--name", "tb", "--quiet",
                 "--tensorboard"]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/top1", "val/loss"} <= tags
    assert len(events.Scalars("train/loss")) == 1437 // 64  # one point per optimizer step
    row = json.loads((tmp_path / "tb" / "metrics.json").read_text())[-1]
    assert events.Scalars("val/top1")[-1].value == pytest.approx(row["val_top1"], abs=1e-3)
    env = json.loads((tmp_path / "tb" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["world_size"] == 1 and env["device"] == "cpu"


def test_nan_in_the_first_epoch_and_resume_of_nothing_say_so(tmp_path, capsys):
    assert main(["train", "--lr", "1e9", "--epochs", "1", "--threads", "1", "--output", str(tmp_path), "--name", "x",
                 "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "loss became" in err and "no checkpoint had been written yet" in err
    assert not (tmp_path / "x" / "last.safetensors").exists()
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "nothing to resume at" in _one_line_error(capsys)
