"""ONNX export: onnxruntime reproduces PyTorch; a failed check writes nothing."""
import numpy as np
import pytest
import torch

import convformer
from convformer.cli import main
from convformer.export import onnx_session

from conftest import perturb


@pytest.mark.parametrize("name,fast", [("convformer_nano", False), ("convformer_nano", True)])
def test_export_matches_pytorch_with_dynamic_batch(tmp_path, name, fast, capsys):
    model = perturb(convformer.create_model(name, num_classes=10)).eval()
    weights = convformer.save_weights(model, tmp_path / "w.safetensors")
    args = ["export", str(tmp_path / "m.onnx"), "--weights", str(weights)] + (["--fast"] if fast else [])
    assert main(args) == 0
    assert "max |onnxruntime - PyTorch|" in capsys.readouterr().out
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's example
    out = onnx_session(tmp_path / "m.onnx").run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() <= 1e-4


@pytest.mark.parametrize("name", ["caformer_s18", "poolformerv2_s12", "randformer_s12"])
def test_every_mixer_exports(tmp_path, name):
    from convformer.export import export_onnx
    model = convformer.create_model(name, **({"img_size": 64} if name.startswith("rand") else {}))
    assert export_onnx(model, tmp_path / "m.onnx", 64)["max_abs_diff"] <= 1e-4


def test_failed_check_writes_nothing(tmp_path, capsys):
    target = tmp_path / "m.onnx"
    assert main(["export", str(target), "--model", "convformer_nano", "--atol", "1e-12"]) == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "not written" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,meta", [("convformer_nano", {}), ("convformer_pose_t1", {}), ("cfsr_x2", {}),
                                       ("conformer_ctc_xs", {"vocabulary": '{"chars": " abcdefghijklmnopqrstuvwxyz\'"}'})])
def test_export_reads_the_weight_file_once(tmp_path, name, meta, monkeypatch):
    """Every task's export path reads the weight file (its tensors) exactly once; the model it builds is
    the one the file holds (the export's own check then compares it with onnxruntime)."""
    from convformer.weights import io as wio
    kwargs = {"num_classes": 10} if name == "convformer_nano" else {"vocab_size": 28} if name.startswith("conf") else {}
    model = convformer.create_model(name, **kwargs).eval()
    weights = convformer.save_weights(model, tmp_path / "w.safetensors", metadata=meta)
    reads, real = [], wio.load_file
    monkeypatch.setattr(wio, "load_file", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    args = ["export", str(tmp_path / "m.onnx"), "--weights", str(weights)]
    if name == "cfsr_x2":  # SR exports at any size, so it names its model and size
        args += ["--model", name, "--img-size", "16"]
    assert main(args) == 0
    assert reads == [str(weights)]
