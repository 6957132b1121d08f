"""Pose training through the one engine: the run folder, learning, exact resume after SIGKILL, bad data."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import convformer
from convformer.pose.synth import generate_h36m_like
from convformer.pose.config import PoseTrainConfig
from convformer.pose.task import PoseLifting, predict
from convformer.engine.state import read_train_state
from convformer.engine.train import train
from convformer.errors import ConvformerError

from conftest import Crash, crash_at

SMALL = dict(synthetic_frames=60, stride=5, val_stride=10, batch_size=32, threads=1, warmup_epochs=0.5)


@pytest.fixture
def restore_determinism():
    """train(deterministic=True) switches torch to deterministic algorithms process-wide: undo it."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _rows(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("seq2seq", [False, True])
def test_run_folder_config_metrics_and_weights(tmp_path, seq2seq):
    cfg = PoseTrainConfig(model="convformer_pose_t9", train_subjects="S1", actions="Walking,Squat", epochs=1,
                          seq2seq=seq2seq, output=str(tmp_path), name="r", **SMALL)
    result = train(cfg, progress=False)
    run = tmp_path / "r"
    assert {"config.json", "metrics.json", "metrics.csv", "best.safetensors", "last.safetensors",
            "checkpoint.safetensors", "curves.png"} <= {p.name for p in run.iterdir()}
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "pose" and config["receptive_field"] == 9 and config["seq2seq"] is seq2seq
    assert config["model"] == "convformer_pose_t9" and config["train_subjects"] == "S1"
    # 2 actions x 4 cameras of S1 (about 60 frames each, every 5th): the windows really are that subset
    assert config["train_sequences"] == 8 and 8 * 11 <= config["train_windows"] <= 8 * 14
    assert config["val_sequences"] == 16  # S9 and S11, same actions
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1]
    row = rows[0]
    assert row["val_p_mpjpe"] < row["val_mpjpe"] and 0 < row["train_mpjpe"] < 2000
    # the loss is MPJPE in metres, the logged statistics are millimetres
    assert row["train_mpjpe"] == pytest.approx(1000 * row["train_loss"], abs=0.02)
    assert row["val_mpjpe"] == pytest.approx(1000 * row["val_loss"], abs=0.02)
    assert result["val_mpjpe"] == pytest.approx(row["val_mpjpe"])
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # the logged val MPJPE is what the saved weights give, recomputed by hand over the validation windows
    with safe_open(str(run / "last.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["architecture"] == "convformer_pose_t9" and meta["receptive_field"] == "9"
    assert meta["seq2seq"] == str(seq2seq)
    model = convformer.create_model("convformer_pose_t9", seq2seq=seq2seq)
    convformer.load_weights(model, run / "last.safetensors")
    model.eval()
    val = PoseLifting().build(cfg, progress=False).val
    kp = torch.stack([val[i][0] for i in range(len(val))])
    target = torch.stack([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        pred = predict(model, kp, flip_tta=True)
    assert pred.shape == target.shape == (len(val), 1, 17, 3)
    by_hand = 1000 * (pred - target).norm(dim=-1).mean().item()
    assert by_hand == pytest.approx(row["val_mpjpe"], abs=2e-3)


def test_training_reduces_the_training_error(tmp_path):
    cfg = PoseTrainConfig(model="martinez_mlp", train_subjects="S1", epochs=3, output=str(tmp_path), name="m",
                          **SMALL)
    train(cfg, progress=False)
    rows = _rows(tmp_path / "m")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_mpjpe"] < 0.8 * rows[0]["train_mpjpe"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_mpjpe"] < rows[0]["val_mpjpe"]  # and it generalises to the held-out subjects


# A training process that SIGKILLs itself just before global step KILL_AT: no finally blocks, no flushing,
# exactly what an OOM killer or a pre-empted machine does, but at a step chosen by the test.
_KILLED_RUN = r"""
import json, os, signal, sys
from convformer.pose import task as pose
from convformer.pose.config import PoseTrainConfig
from convformer.engine.train import train
kill_at, options = int(sys.argv[1]), json.loads(sys.argv[2])
real = pose.PoseLifting.prepare
def prepare(self, batch, cfg, device, seed_parts):
    if seed_parts[1] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch, cfg, device, seed_parts)
pose.PoseLifting.prepare = prepare
train(PoseTrainConfig(**options), progress=False, given=set(options))
"""


def _run_until_killed(kill_at: int, options: dict) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(kill_at), json.dumps(options)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _info(run):
    return json.loads(read_train_state(run / "checkpoint.safetensors")[1]["info"])


def test_interrupted_and_killed_run_resumes_to_bit_identical_weights(tmp_path, monkeypatch, restore_determinism):
    # martinez: dropout 0.5 everywhere, plus flip augmentation: every step draws random numbers
    options = dict(model="martinez_mlp", train_subjects="S1", epochs=2, checkpoint_every=3, deterministic=True,
                   output=str(tmp_path), **SMALL)
    train(PoseTrainConfig(**options, name="ref"), progress=False)
    ref = tmp_path / "ref"
    steps = json.loads((ref / "config.json").read_text())["steps_per_epoch"]
    assert steps == 7  # 20 S1 sequences of about 60 frames, every 5th frame, batches of 32

    run = tmp_path / "killed"
    with monkeypatch.context() as patch:  # crash at step 6 of epoch 1, two steps after the checkpoint at 3
        crash_at(patch, PoseLifting, 5)
        with pytest.raises(Crash):
            train(PoseTrainConfig(**options, name="killed"), progress=False)
    assert _info(run)["epoch"] == 1 and _info(run)["step_in_epoch"] == 3
    assert not (run / "metrics.json").exists() and not (run / "last.safetensors").exists()

    # resumed in another process, which is SIGKILLed at step 5 of epoch 2, two steps after the checkpoint at 9
    _run_until_killed(11, {"resume": str(run), "threads": 1})
    info = _info(run)
    assert info["epoch"] == 2 and info["step_in_epoch"] == 2 and info["global_step"] == 9
    assert [r["epoch"] for r in _rows(run)] == [1]

    train(PoseTrainConfig(resume=str(run), threads=1), progress=False, given={"resume", "threads"})
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(_rows(run)) == strip(_rows(ref))
    assert not list(run.glob(".*.tmp"))


def test_data_folder_without_a_test_subject_names_it(tmp_path):
    data = tmp_path / "data"
    generate_h36m_like(data, subjects=("S1", "S5", "S6", "S7", "S8", "S9"), actions=("Walking",), frames=30,
                       compress=False)
    cfg = PoseTrainConfig(model="martinez_mlp", data=str(data), keypoints="synth", epochs=1,
                          output=str(tmp_path / "runs"), name="x", **SMALL)
    with pytest.raises(ConvformerError, match=r"S11 is not in data_3d_h36m\.npz"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs" / "x").exists()  # nothing written for a run that cannot start


def test_seq2seq_needs_a_temporal_model(tmp_path):
    cfg = PoseTrainConfig(model="martinez_mlp", seq2seq=True, epochs=1, output=str(tmp_path), name="x", **SMALL)
    with pytest.raises(ConvformerError, match="seq2seq.*martinez_mlp sees one frame"):
        train(cfg, progress=False)
    assert not (tmp_path / "x").exists()


def test_exponential_schedule_decays_the_lr_per_epoch_as_the_paper(tmp_path):
    from convformer.pose.config import PoseTrainConfig
    from convformer.engine.train import train
    cfg = PoseTrainConfig(model="martinez_mlp", synthetic_frames=40, stride=5, val_stride=20, batch_size=64, epochs=3,
                          warmup_epochs=0, lr=1e-3, lr_schedule="exponential", lr_decay=0.5, threads=1,
                          output=str(tmp_path), name="exp")
    train(cfg, progress=False)
    rows = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    # the lr logged at the end of epoch e is the one its last step used: 1e-3 * 0.5 ** (e - 1)
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4, 2.5e-4])
