"""The logic of timm's own model test suite (pytorch-image-models tests/test_models.py: forward,
backward, default cfgs, torchscript, features, forward_intermediates, fx), for every registered
classification model, on small inputs. Where timm only checks that something runs, we also check that
the result equals the eager model's."""
import math

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import convformer

from conftest import by_structure, small_kwargs

# Every registered classifier, except where another entry already runs the same code: the generic
# "metaformer" frame defaults to caformer_s18's network, and the LowFormers differ by widths and depths
# only apart from three structures: b0 (attention + MLP, fused and plain MBConv), e1 (neither branch)
# and e3 (attention without MLP). The skipped ones still get the parity, card and fast-path tests.
SAME_CODE_AS_ANOTHER = {"metaformer", "lowformer_b1", "lowformer_b15", "lowformer_b3", "lowformer_e2"}
MODELS = [n for n in convformer.list_models(task="classification") if n not in SAME_CODE_AS_ANOTHER]
SIZE = 64


def make(name, **kwargs):
    torch.manual_seed(0)
    return convformer.create_model(name, **small_kwargs(name, SIZE), **kwargs)


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = make(name, num_classes=42).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_features_head_and_reset_classifier(name):
    model = make(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, SIZE // 32, SIZE // 32)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        assert model.forward_head(feats).shape == (2, 1000)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)
        model.reset_classifier(0, "")  # unpooled: the pre-logit layers (if any) at every position
        assert model(x).shape == (2, model.head_hidden_size, SIZE // 32, SIZE // 32)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_features_only(name):
    model = make(name, features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(2, 3, SIZE, SIZE))
    assert len(maps) == 4
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [m.shape[-1] for m in maps] == [SIZE // r for r in (4, 8, 16, 32)]
    part = make(name, features_only=True, out_indices=(1, 3))
    assert part.feature_info.channels() == [model.feature_info.channels()[i] for i in (1, 3)]


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_grad_checkpointing_matches_plain_forward(name):
    model = make(name, num_classes=10).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    plain = model(x)
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    ckpt = model(x)
    ckpt.sum().backward()
    torch.testing.assert_close(ckpt, plain)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    model = make("convformer_nano").eval()
    with pytest.raises(convformer.ConvformerError, match=r"expected images shaped \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(convformer.ConvformerError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 16))
    rand = convformer.create_model("randformer_s12")  # built for 224
    with pytest.raises(convformer.ConvformerError, match="built for 224x224.*img_size=256"):
        rand(torch.randn(1, 3, 256, 256))
    assert convformer.create_model("randformer_s12", img_size=256)(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


def test_any_multiple_of_32_works():
    model = make("caformer_s18").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 160)).shape == (1, 1000)


def make_sized(name, **kwargs):
    """A model whose pretrained_cfg describes the small test size (timm reads sizes from the cfg)."""
    torch.manual_seed(0)
    return convformer.create_model(name, img_size=SIZE, **kwargs)


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_default_cfgs_describe_the_model(name):
    model = make_sized(name).eval()
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.default_cfg
    assert cfg == model.pretrained_cfg
    state = model.state_dict()
    assert state[cfg["classifier"] + ".weight"].shape[0] == cfg["num_classes"] == model.num_classes
    assert state[cfg["first_conv"] + ".weight"].shape[1] == cfg["input_size"][0]
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre)  # no classifier = the pre-logits
        model.reset_classifier(0, "")
        assert model(x).shape[1:] == (model.head_hidden_size, *cfg["pool_size"])
        bare = make_sized(name, num_classes=0, global_pool="").eval()
        assert bare(x).shape[1:] == (bare.head_hidden_size, *cfg["pool_size"])
    assert make_sized(name, num_classes=0).pretrained_cfg["num_classes"] == 0


def test_default_size_cfg_matches_the_card():
    cfg = convformer.create_model("caformer_s18").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["pool_size"] == (7, 7) and cfg["classifier"] == "head.fc.fc2"
    assert convformer.create_model("poolformer_s12").pretrained_cfg["crop_pct"] == 0.9


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_torchscript_equals_eager(name):
    model = make_sized(name).eval()
    features = make_sized(name, features_only=True).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), atol=1e-5, rtol=1e-5)
        scripted_maps = torch.jit.script(features)(x)
        eager_maps = features(x)
    assert isinstance(scripted_maps, list) and len(scripted_maps) == len(eager_maps) == 4
    for a, b in zip(scripted_maps, eager_maps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_forward_intermediates_and_pruning_follow_timm(name):
    model = make_sized(name).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert len(maps) == len(channels) == 4
        for c, r, m in zip(channels, reductions, maps):
            assert m.shape == (1, c, math.ceil(SIZE / r), math.ceil(SIZE / r))
        torch.testing.assert_close(final, model.forward_features(x))
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2, maps[2:])
        nhwc = model.forward_intermediates(x, indices=[-1], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0], maps[-1].permute(0, 2, 3, 1))
        early, taken = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        torch.testing.assert_close(early, maps[1])
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
        model.set_grad_checkpointing(False)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(model.stages) == 2 and model.num_features == channels[1] and model.num_classes == 0
        torch.testing.assert_close(model(x), maps[1])  # pruned: the last kept stage's map, unpooled
        torch.testing.assert_close(model.forward_intermediates(x, intermediates_only=True), maps[:2])
        whole = make_sized(name).eval()
        assert whole.prune_intermediate_layers(4) == [0, 1, 2, 3] and whole.num_classes == 0
        torch.testing.assert_close(whole(x), final)  # head removed, no stray norm: the last stage's map
    with pytest.raises(convformer.ConvformerError, match="out of range"):
        model.forward_intermediates(x, indices=[5])
    with pytest.raises(convformer.ConvformerError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("name", by_structure(MODELS))
def test_fx_feature_extractor_forward_backward_and_script(name):
    """torchvision's create_feature_extractor (what timm's fx tests use) on the classifier node the
    pretrained_cfg names: eager-equal output, a gradient for every parameter, and scriptable."""
    model = make_sized(name, num_classes=42).eval()
    node = model.pretrained_cfg["classifier"]
    fx_model = create_feature_extractor(model, return_nodes={node: "logits"})
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(fx_model(x)["logits"], expected)
        torch.testing.assert_close(torch.jit.script(fx_model)(x)["logits"], expected, atol=1e-5, rtol=1e-5)
    fx_model.train()
    fx_model(x)["logits"].mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing and sum(p.numel() for p in fx_model.parameters()) == sum(p.numel() for p in model.parameters())
