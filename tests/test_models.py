"""The equivalent of timm's own model tests, for every registered model, on small inputs."""
import pytest
import torch
import torch.fx

import convformer

from conftest import small_kwargs

MODELS = convformer.list_models(task="classification")
SIZE = 64


def make(name, **kwargs):
    torch.manual_seed(0)
    return convformer.create_model(name, **small_kwargs(name, SIZE), **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = make(name, num_classes=42).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_features_head_and_reset_classifier(name):
    model = make(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, SIZE // 32, SIZE // 32)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert model.forward_head(feats).shape == (2, 1000)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape == (2, model.num_features, SIZE // 32, SIZE // 32)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
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


@pytest.mark.parametrize("name", MODELS)
def test_fx_trace_equals_eager(name):
    model = make(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
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
