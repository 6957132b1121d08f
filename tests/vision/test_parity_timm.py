"""Output parity with timm, the reference port: the same weights give the same logits and feature maps,
in both directions (timm weights into ours, our weights into timm)."""
import pytest
import timm
import torch

import convformer
from convformer.weights import to_timm

from conftest import TIMM_VARIANTS, by_structure, perturb  # noqa: F401  (perturb: imported from here by older tests)

SMALL = ("s12", "s18")


def ours_for(name):
    # timm's MlpHead LayerNorm uses eps 1e-6; the official code (our default) 1e-5
    kwargs = {"head_norm_eps": 1e-6} if name.startswith(("convformer", "caformer")) else {}
    return convformer.create_model(name, **kwargs).eval()


def size_for(name):
    return 224 if name.endswith(SMALL) else 96


@pytest.mark.parametrize("name", by_structure(TIMM_VARIANTS))
def test_timm_weights_into_ours(name):
    torch.manual_seed(1)
    ref = perturb(timm.create_model(name)).eval()
    ours = ours_for(name)
    assert convformer.load_weights(ours, ref.state_dict()) == "timm"
    x = torch.randn(2, 3, size_for(name), size_for(name))
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4
    # forward_intermediates follows timm's signature and meaning, argument by argument
    calls = [dict(intermediates_only=True), dict(indices=2), dict(indices=[0, -2], stop_early=True),
             dict(indices=(1,), stop_early=False, norm=True)]
    with torch.no_grad():
        for kwargs in calls:
            got, want = ours.forward_intermediates(x, **kwargs), ref.forward_intermediates(x, **kwargs)
            if not kwargs.get("intermediates_only"):
                assert (got[0] - want[0]).abs().max().item() <= 1e-4, kwargs
                got, want = got[1], want[1]
            assert len(got) == len(want), kwargs
            for a, b in zip(got, want):   # 1e-4 of the features' scale (deep stages reach |x| ~ 5: float rounding)
                scale = max(1.0, b.abs().max().item())
                assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4 * scale, kwargs


@pytest.mark.parametrize("name", by_structure(TIMM_VARIANTS))
def test_our_weights_into_timm(name):
    torch.manual_seed(2)
    ours = perturb(ours_for(name), seed=3)
    ref = timm.create_model(name).eval()
    ref.load_state_dict(to_timm(ours), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


def test_default_head_eps_is_official_and_differs_from_timm():
    assert ours_for("caformer_s18").head.fc.norm.eps == 1e-6
    assert convformer.create_model("caformer_s18").head.fc.norm.eps == 1e-5
