"""The training path: fused StarReLU with a hand-written backward, fused residuals, bf16 autocast,
channels-last input and gradient checkpointing all give the gradients of the reference."""
import pytest
import timm
import torch
import torch.nn.functional as F

import convformer
from convformer.layers.activations import StarReLUFunction, star_relu

from conftest import perturb
from test_parity_timm import ours_for


def plain_star_relu(x, s, b):
    return s * F.relu(x) ** 2 + b


def test_fused_star_relu_passes_gradcheck_in_double():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(StarReLUFunction.apply, (x, s, b))


def test_fused_star_relu_matches_plain_form_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 7, 48, requires_grad=True)
    s = torch.tensor([1.3], requires_grad=True)
    b = torch.tensor([0.2], requires_grad=True)
    g = torch.randn(2, 7, 7, 48)
    out = star_relu(x, s, b)
    assert out.grad_fn is not None and "StarReLUFunction" in type(out.grad_fn).__name__
    grads = torch.autograd.grad(out, (x, s, b), g)
    ref = plain_star_relu(x, s, b)
    ref_grads = torch.autograd.grad(ref, (x, s, b), g)
    assert torch.allclose(out, ref, atol=1e-6)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5)


def test_fused_star_relu_keeps_half_the_activation_memory_for_backward():
    x = torch.randn(64, 256, requires_grad=True)
    s = torch.ones(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)

    def saved_bytes(fn):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            fn(x, s, b)
        return sum(total)
    big = x.numel() * 4
    assert saved_bytes(StarReLUFunction.apply) < 1.1 * big      # relu(x) (+ two scalars)
    assert saved_bytes(plain_star_relu) >= 2 * big              # relu(x) and relu(x)**2


@pytest.mark.parametrize("name", ["convformer_s18", "caformer_s18"])
def test_training_gradients_equal_timm(name):
    """Same weights and input: loss and every parameter gradient equal timm's (train mode)."""
    torch.manual_seed(4)
    ref = perturb(timm.create_model(name), seed=5).train()
    ours = ours_for(name).train()
    convformer.load_weights(ours, ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([3, 7])
    F.cross_entropy(ours(x), target).backward()
    F.cross_entropy(ref(x), target).backward()
    ref_params = dict(ref.named_parameters())
    checked = 0
    for key, p in ours.named_parameters():
        r = ref_params[key].grad.reshape(p.shape)
        scale = r.abs().max().item() + 1e-12
        assert (p.grad - r).abs().max().item() <= 1e-4 * max(1.0, scale), key
        checked += 1
    assert checked == len(ref_params)


def test_channels_last_checkpointing_and_fused_ops_do_not_change_gradients():
    torch.manual_seed(0)
    model = perturb(convformer.create_model("convformer_s18")).train()
    x = torch.randn(2, 3, 64, 64)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), torch.tensor([1, 2])).backward()
    for k, p in model.named_parameters():
        assert (p.grad - ref[k]).abs().max().item() <= 1e-4 * max(1.0, ref[k].abs().max().item()), k


def test_bf16_autocast_training_gradients_track_fp32():
    torch.manual_seed(0)
    model = perturb(convformer.create_model("convformer_s18")).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([1, 2])
    F.cross_entropy(model(x), target).backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), target)
    loss.backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    cos = F.cosine_similarity(got, ref, dim=0).item()
    assert cos > 0.98
