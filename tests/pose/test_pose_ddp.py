"""`convformer pose train` under torchrun: two gloo processes train exactly what one process trains with the
same global batch (the pose task goes through the one engine, so DDP comes with it)."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

CLI = [sys.executable, "-m", "convformer"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow  # the engine's DDP runs in make test for images and speech
def test_two_gloo_processes_equal_one_process_for_pose(tmp_path):
    common = ["pose", "train", "--model", "convformer_pose_t9", "--epochs", "1", "--synthetic-frames", "40",
              "--stride", "4", "--val-stride", "10", "--drop-path-rate", "0", "--threads", "1", "--quiet",
              "--output", str(tmp_path)]
    one = subprocess.run(CLI + [*common, "--batch-size", "32", "--name", "one"], env=_env(), capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(30500 + os.getpid() % 1000), "-m", "convformer", *common, "--batch-size", "16",
                          "--name", "two"], env=_env(), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    # parameters whose gradient is exactly zero in exact arithmetic get AdamW updates of size lr driven by
    # rounding noise alone, so they cannot agree: the key biases (softmax ignores a shift shared by all
    # keys) and the temporal output projection's per-frame bias (the next LayerNorm removes it)
    dead = [k for k in a if ".attn.k.convs." in k and k.endswith("bias") or
            k.startswith("temporal_blocks.") and k.endswith("attn.proj.bias")]
    assert len(dead) == 2 * 3 * 2 + 2
    worst = max((a[k] - b[k]).abs().max().item() for k in a if k not in dead)
    assert worst < 1e-4, worst
    assert json.loads((tmp_path / "two" / "env.json").read_text())["world_size"] == 2
    r1 = json.loads((tmp_path / "one" / "metrics.json").read_text())[-1]
    r2 = json.loads((tmp_path / "two" / "metrics.json").read_text())[-1]
    # flip augmentation is drawn per sample, so both runs saw the same flips; val metrics reduced over ranks
    assert r1["train_mpjpe"] == pytest.approx(r2["train_mpjpe"], rel=1e-4)
    assert r1["val_mpjpe"] == pytest.approx(r2["val_mpjpe"], rel=1e-3)
