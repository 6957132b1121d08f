"""The fast inference path equals the plain model for every registered variant."""
import pytest
import torch

import convformer
from convformer.models.fold import FoldedBlock

from conftest import small_kwargs
from test_parity_timm import perturb

MODELS = convformer.list_models(task="classification")


@pytest.mark.parametrize("name", MODELS)
def test_folded_model_matches_plain_fp32(name):
    torch.manual_seed(0)
    model = perturb(convformer.create_model(name, **small_kwargs(name, 64))).eval()
    fast = convformer.optimize(model)
    assert all(isinstance(b, FoldedBlock) for s in fast.stages for b in s.blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert (ref - out).abs().max().item() <= 1e-4
    assert all(isinstance(b, convformer.models.metaformer.MetaFormerBlock) for b in model.stages[0].blocks)


def test_bf16_path_casts_in_and_out_and_stays_close():
    torch.manual_seed(0)
    model = perturb(convformer.create_model("caformer_s18")).eval()
    fast = convformer.optimize(model, dtype="bf16")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert out.dtype == torch.float32
    assert next(fast.parameters()).dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99


def test_bad_dtype_is_a_clear_error():
    with pytest.raises(convformer.ConvformerError, match="dtype must be one of"):
        convformer.optimize(convformer.create_model("convformer_nano"), dtype="int3")


@pytest.mark.parametrize("name", ["convformer_s18", "caformer_s18", "poolformerv2_s12", "poolformer_s12",
                                  "randformer_s12"])
def test_cache_chunked_inference_matches_plain_with_many_chunks(name, monkeypatch):
    """The row-chunked eager path must give the same outputs when rows span many uneven chunks."""
    from convformer.models import fold
    monkeypatch.setattr(fold, "CHUNK_BYTES", 4 * 512 * 50)  # ~50 rows per chunk for a 512-wide hidden
    torch.manual_seed(0)
    model = perturb(convformer.create_model(name, **small_kwargs(name, 64))).eval()
    fast = convformer.optimize(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert (ref - out).abs().max().item() <= 1e-4
    block = fast.stages[0].blocks[0]
    # Only per-pixel LayerNorm keeps rows independent; the GroupNorm(1) of the pool/rand/identity models
    # spans (H, W, C), so those blocks must keep the whole-tensor path.
    per_pixel = name.startswith(("convformer", "caformer"))
    assert block.chunk_mlp == per_pixel
    assert block.chunk_mixer == per_pixel  # both start with separable-conv stages


def test_folded_model_still_differentiable_against_input():
    """With autograd on, the chunked in-place path is bypassed and gradients still flow."""
    torch.manual_seed(0)
    model = convformer.create_model("convformer_s18", **small_kwargs("convformer_s18", 64)).eval()
    fast = convformer.optimize(model)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    fast(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    model(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-4, rtol=1e-3)
