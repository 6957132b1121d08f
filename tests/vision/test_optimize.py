"""The fast inference path equals the plain model for every registered variant."""
import pytest
import torch

import convformer
from convformer.vision.fold import FoldedBlock

from convformer.optimize import optimize_for_export

from conftest import by_structure, randomize_, small_kwargs
from conftest import perturb

MODELS = convformer.list_models(task="classification")
METAFORMERS = [n for n in MODELS if not n.startswith("lowformer")]
LOWFORMERS = ["lowformer_b0", "lowformer_e1", "lowformer_e3"]  # the three block structures (see test_models)


@pytest.mark.parametrize("name", by_structure(METAFORMERS))
def test_folded_model_matches_plain_fp32(name):
    torch.manual_seed(0)
    model = perturb(convformer.create_model(name, **small_kwargs(name, 64))).eval()
    fast = convformer.optimize(model)
    assert all(isinstance(b, FoldedBlock) for s in fast.stages for b in s.blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert (ref - out).abs().max().item() <= 1e-4
    assert all(isinstance(b, convformer.vision.metaformer.MetaFormerBlock) for b in model.stages[0].blocks)


@pytest.mark.parametrize("name", LOWFORMERS)
def test_lowformer_fast_path_folds_every_norm_it_can_and_matches_plain(name):
    torch.manual_seed(0)
    model = randomize_(convformer.create_model(name), std=0.05).eval()
    fast = convformer.optimize(model)
    for copy in (fast.small, fast.large):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
        assert all(not b.norm2.affine for s in copy.stages[2:] for b in s.blocks if b.mlp is not None)
    assert fast.large.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.small.stem.conv.weight.is_contiguous()
    # rewrites of the layers PyTorch runs on slow kernels: no transposed 3x3 at stride 1 left, and the
    # NCHW copy's 1x1 convs are matrix products
    ups = [b.token_mixer.up for b in fast.large.stages[3].blocks if b.token_mixer is not None]
    assert all(type(up) is torch.nn.Conv2d for up in ups)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in fast.small.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        for batch in (1, 5):  # both sides of the NCHW / channels-last switch
            x = torch.randn(batch, 3, 64, 64)
            ref = model(x)
            assert (fast(x) - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
            exported = optimize_for_export(model)
            assert (exported(x) - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


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
    from convformer.vision import fold
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


def test_chunk_layer_norm_matches_torch_layer_norm():
    """The chunked path's LayerNorm (row sum, norm, scale) must equal F.layer_norm, also on rows whose
    mean is far above their spread (where a one-pass E[x^2] - mean^2 variance would lose digits)."""
    from convformer.vision.fold import _layer_norm_rows
    torch.manual_seed(0)
    x = torch.randn(300, 96) * 0.5 + 20 * torch.randn(300, 1)
    ref = torch.nn.functional.layer_norm(x.double(), (96,), eps=1e-6)
    assert (_layer_norm_rows(x, 1e-6).double() - ref).abs().max().item() <= 1e-4
    small = torch.randn(50, 64) * 1e-4  # eps must enter like layer_norm's
    assert torch.allclose(_layer_norm_rows(small, 1e-6), torch.nn.functional.layer_norm(small, (64,), eps=1e-6),
                          atol=1e-4)


@pytest.mark.parametrize("name", ["convformer_s18", "caformer_s18"])
def test_int8_quantizes_the_stage_linears_and_stays_close(name, monkeypatch):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear
    from convformer.vision import fold
    monkeypatch.setattr(fold, "CHUNK_BYTES", 4 * 512 * 50)  # the chunked path with quantized layers too
    torch.manual_seed(0)
    model = perturb(convformer.create_model(name, **small_kwargs(name, 64))).eval()
    q = convformer.optimize(model, dtype="int8")
    stage_linears = [m for m in q.stages.modules() if isinstance(m, (torch.nn.Linear, DynamicQuantLinear))]
    assert stage_linears and all(isinstance(m, DynamicQuantLinear) for m in stage_linears)
    assert all(type(m) is torch.nn.Linear for m in q.head.modules() if isinstance(m, torch.nn.Linear))  # float head
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))  # original untouched
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref, out, fp32 = model(x), q(x), convformer.optimize(model)(x)
    assert out.dtype == torch.float32
    assert (out - fp32).abs().max().item() > 1e-6  # really quantized, not the float path
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99
    assert (ref - out).abs().max().item() <= 0.1 * ref.abs().max().item()


def test_int8_is_rejected_where_it_is_not_implemented():
    model = convformer.create_model("convformer_nano")
    with pytest.raises(convformer.ConvformerError, match="int8"):
        convformer.optimize(model, dtype="int8", compile=True)
    with pytest.raises(convformer.ConvformerError, match="int8"):
        convformer.optimize(convformer.create_model("convformer_pose_t9"), dtype="int8")


def test_int8_cfsr_quantizes_the_merged_network_and_stays_close():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear
    torch.manual_seed(0)
    model = perturb(convformer.create_model("cfsr_x2")).eval()
    q = convformer.optimize(model, dtype="int8")
    assert not [m for m in q.modules() if type(m) is torch.nn.Linear]
    assert sum(isinstance(m, DynamicQuantLinear) for m in q.modules()) == \
        sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    x = torch.rand(1, 3, 24, 32)
    with torch.inference_mode():
        ref, out = model(x), q(x)
    assert out.shape == ref.shape == (1, 3, 48, 64)
    assert 1e-6 < (out - ref).abs().max().item() < 0.05  # quantized, yet within a few grey levels


def test_compile_wraps_the_folded_model():
    """compile=True must compile the folded blocks (not the plain ones): checked without compiling."""
    fast = convformer.optimize(convformer.create_model("convformer_nano"), compile=True)
    inner = fast._orig_mod
    assert all(isinstance(b, FoldedBlock) for s in inner.stages for b in s.blocks)


def test_compile_gets_the_folded_channels_last_lowformer_with_freezing():
    """What optimize hands torch.compile for a LowFormer, checked eagerly (compiling takes a minute; the
    compiled run is the slow test below)."""
    from convformer.optimize import fast_path
    torch.manual_seed(0)
    model = randomize_(convformer.create_model("lowformer_b0"), std=0.05).eval()
    inner = convformer.optimize(model, compile=True)._orig_mod
    assert fast_path(model).compile_options == {"freezing": True}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inner.modules())
    assert inner.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (inner(x) - model(x)).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_compiled_lowformer_is_folded_channels_last_and_matches_plain():
    torch.manual_seed(0)
    model = randomize_(convformer.create_model("lowformer_b0"), std=0.05).eval()
    fast = convformer.optimize(model, compile=True)
    inner = fast._orig_mod
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inner.modules())
    assert inner.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4


def test_output_agreement_reports_top1_and_logit_gap():
    from convformer.optimize import output_agreement
    torch.manual_seed(0)
    model = convformer.create_model("convformer_nano").eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        labels = model(images).argmax(1)
    same = output_agreement(model, convformer.optimize(model), [(images, labels)])
    assert same["count"] == 4 and same["top1_agreement"] == 1.0 and same["reference_top1"] == 100.0
    assert same["max_abs_logit_diff"] <= 1e-4

    class Shifted(torch.nn.Module):  # moves every image's top class: agreement must drop to 0
        def forward(self, x):
            out = model(x)
            return out - 100 * torch.nn.functional.one_hot(out.argmax(1), out.shape[1])
    other = output_agreement(model, Shifted(), [images])
    assert other["top1_agreement"] == 0.0 and other["max_abs_logit_diff"] >= 99 and "reference_top1" not in other


def test_mixed_metaformer_folds_the_blocks_it_knows_and_keeps_the_others_exact():
    from convformer.vision.metaformer import MetaFormerBlock, MetaFormerConfig, build_metaformer
    torch.manual_seed(0)
    cfg = MetaFormerConfig(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64),
                           mixers=("pool", "sepconv", "lowtention", "lowtention"))
    model = randomize_(perturb(build_metaformer(cfg, num_classes=10)), std=0.05).eval()
    fast = convformer.optimize(model)
    kinds = [type(s.blocks[0]) for s in fast.stages]
    assert kinds == [FoldedBlock, FoldedBlock, MetaFormerBlock, MetaFormerBlock]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert (fast(x) - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
