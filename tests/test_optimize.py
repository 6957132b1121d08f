"""The fast inference path equals the plain model for every registered variant."""
import pytest
import torch

import convformer
from convformer.models.fold import FoldedBlock

from conftest import small_kwargs
from test_parity_timm import perturb

MODELS = convformer.list_models()


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
