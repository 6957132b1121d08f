"""Pose lifters in the speed tooling: ONNX export with onnxruntime parity, `bench` on window inputs, the
fast path, and the two pose benchmark scripts on tiny inputs (timings are never asserted)."""
import json

import numpy as np
import pytest
import torch

import convformer
from convformer.cli import main
from convformer.errors import ConvformerError
from convformer.export import onnx_session


def _trained_like(name: str):
    """Random weights with non-uniform kernel mixing, so the fused kernels differ from a plain average."""
    torch.manual_seed(0)
    model = convformer.create_model(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("eta"):
                p.copy_(torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["convformer_pose_t9", "poseformer_t9", "martinez_mlp"])
def test_pose_export_matches_pytorch_with_dynamic_batch(tmp_path, name, capsys):
    model = _trained_like(name)
    weights = convformer.save_weights(model, tmp_path / "w.safetensors")
    assert main(["export", str(tmp_path / "m.onnx"), "--weights", str(weights)]) == 0
    printed = capsys.readouterr().out
    frames = model.receptive_field
    assert f"keypoints (batch, {frames}, 17, 2)" in printed
    x = torch.rand(3, frames, 17, 2) * 2 - 1  # another batch size than the export's example
    out = onnx_session(tmp_path / "m.onnx").run(None, {"keypoints": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (3, 1, 17, 3)
    assert np.abs(out - ref).max() <= 1e-4


def test_fast_path_equals_the_model_and_leaves_it_trainable():
    model = _trained_like("convformer_pose_t9")
    fast = convformer.optimize(model)
    x = torch.rand(4, 9, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
    assert model.temporal_blocks[0].attn.fused_weight is None  # the original still fuses per forward
    assert not any("fused" in k for k in fast.state_dict())  # nor saved with the weights


def test_bench_times_lifters_on_windows_and_refuses_mixed_inputs():
    from convformer.bench.runner import run_benchmark
    report = run_benchmark(["convformer_pose_t9", "convformer_pose_t9@fast"], batch=2, repeats=1, warmup=0,
                           threads=1, train=True)
    by = {r["spec"]: r for r in report["results"]}
    card = convformer.model_card("convformer_pose_t9")
    assert by["convformer_pose_t9"]["macs"] == card.macs and by["convformer_pose_t9"]["params"] == card.params
    assert by["convformer_pose_t9"]["train_throughput"] > 0 and by["convformer_pose_t9@fast"]["throughput"] > 0
    with pytest.raises(ConvformerError, match="different inputs"):
        run_benchmark(["convformer_pose_t9", "martinez_mlp"], batch=1, repeats=1, warmup=0, threads=1)


def test_pose_speed_script_on_a_tiny_input(tmp_path, capsys):
    from conftest import load_benchmark
    script = load_benchmark("pose_speed")
    out = tmp_path / "speed.json"
    script.main(["--frames", "9", "--batches", "2", "--repeats", "1", "--threads", "1", "--output", str(out)])
    reports = json.loads(out.read_text())
    specs = [r["spec"] for rep in reports for r in rep["results"]]
    assert specs == ["convformer_pose_t9", "convformer_pose_t9@fast", "onnx:convformer_pose_t9", "poseformer_t9",
                     "poseformer_t9@fast", "onnx:poseformer_t9", "martinez_mlp", "martinez_mlp@fast",
                     "onnx:martinez_mlp"]
    params = {r["spec"]: r["params"] for rep in reports for r in rep["results"]}
    assert params["convformer_pose_t9"] < params["poseformer_t9"] / 3  # the paper's point, from the models
    assert "| 9 | 2 | convformer_pose_t9 |" in (tmp_path / "speed.md").read_text()


def test_pose_synthetic_script_on_a_tiny_budget(tmp_path):
    from conftest import load_benchmark
    script = load_benchmark("pose_synthetic")
    models = (("MLP", "martinez_mlp", {}), ("ConvFormer T=1", "convformer_pose_t1", {}))
    report = script.run(1, 40, 0.0, 10, 32, 1e-3, tmp_path / "synth.json", models=models, threads=1, progress=False)
    rows = report["results"]
    assert [r["model"] for r in rows] == ["martinez_mlp", "convformer_pose_t1"]
    for r in rows:
        actions = [a for a in r["per_action"] if a != "Average"]
        assert len(actions) == 5
        mean = sum(r["per_action"][a]["mpjpe"] for a in actions) / len(actions)
        assert r["mpjpe"] == pytest.approx(mean)  # the papers' average of per-action means
        assert 0 < r["p_mpjpe"] < r["mpjpe"] + 1e-6
    text = (tmp_path / "synth.md").read_text()
    assert "| MLP |" in text and "per action" in text
