"""optimize_for_export(model, "onnxruntime"): the graph rewritten for ONNX Runtime's blocked layout gives
the plain model's outputs in ONNX Runtime, keeps full-width tensors in that layout, and its channel LayerNorm stays
exact on inputs whose mean dwarfs their spread."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convformer
from convformer.export import export_onnx, onnx_session
from convformer.optimize import optimize_for_export

from conftest import by_structure, perturb, small_kwargs

ort = pytest.importorskip("onnxruntime")

CLASSIFIERS = convformer.list_models(task="classification")


@pytest.mark.parametrize("name", by_structure(CLASSIFIERS))
def test_every_classifier_matches_the_plain_model_in_onnxruntime(tmp_path, name):
    torch.manual_seed(0)
    model = perturb(convformer.create_model(name, **small_kwargs(name, 64))).eval()
    result = export_onnx(model, tmp_path / "m.onnx", 64, export_form=optimize_for_export(model, "onnxruntime"))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # not the export's batch
    out = onnx_session(tmp_path / "m.onnx", 1).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert result["max_abs_diff"] <= 1e-4
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


def _optimized_graph(tmp_path, model, size=64):
    import onnx
    export_onnx(model, tmp_path / "m.onnx", size, export_form=optimize_for_export(model, "onnxruntime"))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "opt.onnx")).graph


@pytest.mark.parametrize("name", ["convformer_nano", "caformer_s18"])
def test_full_width_tensors_stay_in_the_blocked_layout(tmp_path, name):
    """ORT converts every conv and elementwise op of the blocks (the profile of the issue showed 151 reorder
    nodes on timm's export); only one-channel norm statistics, the attention products and the head leave."""
    graph = _optimized_graph(tmp_path, convformer.create_model(name).eval())
    ops = [n.op_type for n in graph.node]
    assert ops.count("Conv") > 20 and all(n.domain == "com.microsoft.nchwc" for n in graph.node if n.op_type == "Conv")
    cfg = convformer.create_model(name).cfg
    attention_blocks = sum(d for d, m in zip(cfg.depths, cfg.mixers) if m == "attention")
    # full width in and out of the layout: each CAFormer attention block's q, k, v leave it and its
    # output re-enters for the projection; the pooled features leave for the head; nothing else
    assert ops.count("ReorderInput") == attention_blocks
    wide = [n for n in graph.node if n.op_type == "ReorderOutput"
            and next(a.i for a in n.attribute if a.name == "channels") > 1]
    assert len(wide) == attention_blocks + 1
    assert ops.count("Transpose") <= 2 * attention_blocks and ops.count("LayerNormalization") <= 2  # the head's
    made_by = {out: n for n in graph.node for out in n.output}
    for node in graph.node:  # the norms' var ** -0.5 runs on their one-channel statistics only
        if node.op_type == "Pow":
            source = made_by[node.input[0]]
            assert source.op_type == "ReorderOutput" and next(a.i for a in source.attribute if a.name == "channels") == 1


@pytest.mark.parametrize("channels", [64, 320])
def test_channel_norm_is_exact_when_the_mean_dwarfs_the_spread(tmp_path, channels):
    """Mean 100, spread 1: in ONNX Runtime the two-pass form stays within 1e-4 of the plain model's
    LayerNorm (and of a float64 one), where the one-pass E[x^2] - mean^2 form in float32 is off by more than
    1e-3 (so the input is hard enough to tell them apart)."""
    from convformer.vision.metaformer_ort import ChannelNorm
    x = 100 + torch.randn(2, channels, 7, 7, generator=torch.Generator().manual_seed(0))
    norm = ChannelNorm(channels, 1e-6).eval()
    torch.onnx.export(norm, (x,), str(tmp_path / "n.onnx"), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamo=False)
    out = onnx_session(tmp_path / "n.onnx", 1).run(None, {"x": x.numpy()})[0]

    def layer_norm(t):
        return F.layer_norm(t.permute(0, 2, 3, 1), (channels,), eps=1e-6).permute(0, 3, 1, 2).numpy()
    plain, exact = layer_norm(x), layer_norm(x.double())
    assert np.abs(out - plain).max() <= 1e-4 and np.abs(out - exact).max() <= 1e-4
    mean, mean_sq = x.mean(1, keepdim=True), (x * x).mean(1, keepdim=True)
    one_pass = ((x - mean) / torch.sqrt(mean_sq - mean * mean + 1e-6)).numpy()
    assert np.abs(np.nan_to_num(one_pass, nan=1e9) - plain).max() > 1e-3


def test_large_mean_images_through_the_whole_network(tmp_path):
    """The stem's norm sees the first conv of the image: images of mean 1000 still match the plain model."""
    model = perturb(convformer.create_model("convformer_nano")).eval()
    export_onnx(model, tmp_path / "m.onnx", 64, export_form=optimize_for_export(model, "onnxruntime"))
    x = 1000 + torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = onnx_session(tmp_path / "m.onnx", 1).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
