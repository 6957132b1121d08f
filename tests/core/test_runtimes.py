"""optimize(model, runtime="onnxruntime"): outputs equal the plain model's, one checked session per shape."""
import pytest
import torch

import convformer
from convformer.errors import ConvformerError

pytest.importorskip("onnxruntime")


def test_onnxruntime_matches_the_model_and_caches_a_session_per_shape():
    torch.manual_seed(0)
    model = convformer.create_model("convformer_nano", num_classes=10, img_size=32).eval()
    ort = convformer.optimize(model, runtime="onnxruntime", threads=1)
    for batch in (1, 3, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(ort(x), model(x), rtol=0, atol=1e-4)
    assert sorted(ort.checks) == [(1, 3, 32, 32), (3, 3, 32, 32)]       # built once per shape, and checked
    assert all(d <= 1e-4 for d in ort.checks.values())
    assert ort.model_card.name == "convformer_nano"
    with pytest.raises(ConvformerError, match="runtime must be one of"):
        convformer.optimize(model, runtime="tensorrt")
    with pytest.raises(ConvformerError, match="runs float32 as exported"):
        convformer.optimize(model, runtime="onnxruntime", dtype="bf16")


def test_onnxruntime_pose_lifter_and_its_input_check():
    torch.manual_seed(0)
    lifter = convformer.create_model("convformer_pose_t9", embed_dim=8, spatial_depth=1, temporal_depth=1).eval()
    ort = convformer.optimize(lifter, runtime="onnxruntime", threads=1)
    x = torch.randn(2, 9, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(ort(x), lifter(x), rtol=0, atol=1e-4)
    assert ort.receptive_field == 9
    with pytest.raises(ConvformerError, match="receptive field is 9 frames"):
        ort(torch.randn(2, 7, 17, 2))


def test_openvino_matches_the_model_per_shape():
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    torch.manual_seed(0)
    model = convformer.create_model("convformer_nano", num_classes=10, img_size=32).eval()
    ov = convformer.optimize(model, runtime="openvino", threads=1)
    for batch in (2, 1):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(ov(x), model(x), rtol=0, atol=1e-4)
    assert sorted(ov.checks) == [(1, 3, 32, 32), (2, 3, 32, 32)]


def test_a_missing_runtime_is_refused_in_one_line(monkeypatch):
    from convformer import runtimes
    monkeypatch.setitem(runtimes.RUNTIME_PACKAGES, "openvino", ("no_such_package_here", "openvino"))
    model = convformer.create_model("convformer_nano", num_classes=10, img_size=32).eval()
    with pytest.raises(ConvformerError, match=r"needs the no_such_package_here package: pip install .*convformer\[openvino\]"):
        convformer.optimize(model, runtime="openvino")
    auto = convformer.optimize(model, runtime="auto")       # auto leaves it out instead
    assert "openvino" not in auto.candidates and {"torch", "onnxruntime"} <= set(auto.candidates)


def test_auto_keeps_the_fastest_runtime_per_shape(monkeypatch):
    from convformer.runtimes import AutoRuntimeModel
    model = convformer.create_model("convformer_nano", num_classes=10, img_size=32).eval()
    calls = []

    def slow(x):
        import time
        time.sleep(0.02)
        calls.append("slow")
        return model(x)

    def fast_only_for_batch_1(x):
        import time
        time.sleep(0.0 if len(x) == 1 else 0.05)
        calls.append("other")
        return model(x)
    auto = AutoRuntimeModel({"slow": slow, "other": fast_only_for_batch_1}, model, budget=0.3)
    x1, x4 = torch.randn(1, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(auto(x1), model(x1))
        auto(x4)
    assert auto.choices == {(1, 3, 32, 32): "other", (4, 3, 32, 32): "slow"}
    assert set(auto.timings[(1, 3, 32, 32)]) == {"slow", "other"}
    calls.clear()
    with torch.no_grad():
        auto(x4)
    assert calls == ["slow"]                                 # decided once per shape, then only the chosen one


def test_static_int8_in_onnxruntime_is_calibrated_and_close():
    """Calibrated on real-looking inputs, int8 stays near fp32 (it is not exact), serves any batch size,
    and refuses to run without calibration data."""
    torch.manual_seed(0)
    model = convformer.create_model("convformer_nano", num_classes=10, img_size=32).eval()
    calibration = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    int8 = convformer.optimize(model, runtime="onnxruntime", dtype="int8", calibration=calibration, threads=1)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), int8(x)
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.1 * ref.abs().max().item()     # quantized (not the fp32 graph), yet close
    assert 0 < int8.calibration_diff < 0.1 * ref.abs().max().item()
    import onnx
    from pathlib import Path
    graph = onnx.load(str(Path(int8._folder.name) / "int8.onnx")).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 10
    with pytest.raises(ConvformerError, match="calibrated on real inputs"):
        convformer.optimize(model, runtime="onnxruntime", dtype="int8")
