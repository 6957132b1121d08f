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
