"""Pose lifters and their mixer: dynamic convolutional attention against references written out here,
the axes each form convolves along, the papers' parameter counts, and the inference helpers."""
import math

import pytest
import torch
import torch.nn.functional as F

import convformer
from convformer.bench import count_params
from convformer.pose.data import flip_pose
from convformer.pose.task import lift_sequence, predict
from convformer.errors import ConvformerError
from convformer.mixers import MIXERS, DynamicConv1d, DynamicConvAttention

KERNELS = (3, 5, 7)


def _tiny(name="convformer_pose_t9", **kw):
    """A small lifter of a registered family (random, non-trivial weights), in eval mode."""
    torch.manual_seed(0)
    if name != "martinez_mlp":
        kw = {"embed_dim": 16, "spatial_depth": 1, "temporal_depth": 1, "kernel_sizes": KERNELS, **kw}
    model = convformer.create_model(name, **kw)
    with torch.no_grad():  # position embeddings, biases and eta start at 0 or near it: make them matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _randomise_eta(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, DynamicConv1d):
                m.eta.copy_(2 * torch.randn(m.eta.shape, generator=g))


# ---------------------------------------------------------------------------------------- parameter counts
# paper table 3 (T=9, kernels 7,7,7), read as (embed_dim, spatial_depth, temporal_depth) -> (paper M, ours)
TABLE3 = [((16, 2, 2), 0.65, 658_901), ((16, 2, 4), 1.26, 1_265_147), ((16, 4, 2), 0.69, 694_279),
          ((32, 2, 2), 2.56, 2_560_533), ((32, 2, 4), 4.95, 4_946_203), ((32, 4, 2), 2.70, 2_700_903)]


@pytest.mark.parametrize("config,paper_m,ours", TABLE3)
def test_convformer_table3_parameter_counts(config, paper_m, ours):
    d, sd, td = config
    n = count_params(convformer.create_model("convformer_pose_t9", embed_dim=d, spatial_depth=sd,
                                             temporal_depth=td, kernel_sizes=(7, 7, 7)))
    assert n == ours
    rounded, truncated = round(n / 1e6, 2), math.floor(n / 1e6 * 100) / 100
    assert rounded == pytest.approx(paper_m) or truncated == pytest.approx(paper_m)
    if d == 32:  # these rows match with ordinary rounding
        assert rounded == pytest.approx(paper_m)


@pytest.mark.parametrize("name,paper_m,digits", [("convformer_pose_t9", 2.56, 2), ("convformer_pose_t243", 10.24, 2),
                                                 ("poseformer_t81", 9.6, 1)])
def test_default_lifters_match_the_papers_parameter_counts(name, paper_m, digits):
    n = count_params(convformer.create_model(name))
    assert round(n / 1e6, digits) == pytest.approx(paper_m)
    assert convformer.model_card(name).paper_params_m == pytest.approx(paper_m)
    if name == "poseformer_t81":
        assert n == 9_601_797


def test_martinez_baseline_has_four_to_five_million_parameters():
    assert 4e6 <= count_params(convformer.create_model("martinez_mlp")) <= 5e6  # "4-5 million" in the paper


# ------------------------------------------------------------------------------------------- DynamicConv1d
def _explicit_dynamic_conv(m: DynamicConv1d, x):
    w = torch.softmax(m.eta, 0)
    return sum(w[i] * F.conv1d(x, c.weight, c.bias, padding=k // 2)
               for i, (c, k) in enumerate(zip(m.convs, KERNELS)))


def test_dynamic_conv_fused_forward_and_gradients_equal_the_explicit_sum():
    torch.manual_seed(0)
    m = DynamicConv1d(6, KERNELS)
    _randomise_eta(m)
    assert torch.softmax(m.eta, 0).std() > 0.1  # really non-uniform mixing
    x = torch.randn(3, 6, 11, requires_grad=True)
    g = torch.randn(3, 6, 11)
    fused = m(x)
    explicit = _explicit_dynamic_conv(m, x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    params = [x, m.eta] + [p for c in m.convs for p in (c.weight, c.bias)]
    grads_fused = torch.autograd.grad((fused * g).sum(), params)
    grads_explicit = torch.autograd.grad((explicit * g).sum(), params)
    for a, b in zip(grads_fused, grads_explicit):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dynamic_conv_rejects_even_kernels():
    with pytest.raises(ConvformerError, match="odd"):
        DynamicConv1d(4, (3, 4))


# ------------------------------------------------------------------------------ DynamicConvAttention reference
def _reference_attention(m: DynamicConvAttention, x):
    """Written from the paper's description, independent of the module's fused path."""
    b, n, c = x.shape
    h, hd = m.num_heads, c // m.num_heads
    if m.linear:
        w, bias = m.qkv.weight, m.qkv.bias
        q, k, v = (F.linear(x, w[i * c:(i + 1) * c], bias[i * c:(i + 1) * c]) for i in range(3))
    elif m.form == "spatial":  # channels = features, slide along the tokens
        q, k, v = (_explicit_dynamic_conv(p, x.transpose(1, 2)).transpose(1, 2) for p in (m.q, m.k, m.v))
    else:                      # channels = tokens (frames), slide along the features
        q, k, v = (_explicit_dynamic_conv(p, x) for p in (m.q, m.k, m.v))
    heads = []
    for i in range(h):
        s = slice(i * hd, (i + 1) * hd)
        attn = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd), dim=-1)  # (B, N, N)
        heads.append(attn @ v[..., s])
    y = torch.cat(heads, -1)  # (B, N, C)
    if m.linear:
        return F.linear(y, m.proj.weight, m.proj.bias)
    wp = m.proj.weight[..., 0]
    if m.form == "spatial":   # features -> features for every token
        return torch.einsum("oc,bnc->bno", wp, y) + m.proj.bias
    return torch.einsum("om,bmc->boc", wp, y) + m.proj.bias[:, None]  # frames -> frames for every feature


@pytest.mark.parametrize("form,linear", [("spatial", False), ("temporal", False), ("spatial", True),
                                         ("temporal", True)])
def test_dynamic_conv_attention_equals_reference(form, linear):
    torch.manual_seed(0)
    dim, tokens = 16, 9
    m = DynamicConvAttention(dim, tokens, form=form, num_heads=4, kernel_sizes=KERNELS, linear=linear).eval()
    _randomise_eta(m)
    x = torch.randn(3, tokens, dim)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _reference_attention(m, x), atol=1e-5, rtol=1e-5)


def test_dynamic_conv_attention_is_the_registered_mixer_and_checks_heads():
    assert MIXERS["dynamic_conv_attention"] is DynamicConvAttention
    with pytest.raises(ConvformerError, match="heads"):
        DynamicConvAttention(10, 9, num_heads=4)
    with pytest.raises(ConvformerError, match="form"):
        DynamicConvAttention(16, 9, form="channel")


def _record_qkv(monkeypatch):
    """Capture the q, k, v (B, heads, N, hd) the module hands to scaled_dot_product_attention."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
        return real(q, k, v, *args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def _per_token(t):  # (B, heads, N, hd) -> (B, N, heads * hd): features of each token
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def test_spatial_form_convolves_along_the_joints(monkeypatch):
    torch.manual_seed(0)
    dim, joints, j = 16, 17, 8
    m = DynamicConvAttention(dim, joints, form="spatial", num_heads=4, kernel_sizes=KERNELS).eval()
    _randomise_eta(m)
    seen = _record_qkv(monkeypatch)
    x = torch.randn(4, joints, dim)
    x2 = x.clone()
    x2[:, j] += torch.randn(dim)  # change every feature of joint j
    y, y2 = m(x), m(x2)
    reach = max(KERNELS) // 2
    near = torch.zeros(joints, dtype=torch.bool)
    near[j - reach:j + reach + 1] = True
    for a, b in zip(seen[0], seen[1]):  # q, k and v
        diff = (_per_token(a) - _per_token(b)).abs().amax(dim=(0, 2))  # per joint
        assert (diff[near] > 1e-3).all()
        assert (diff[~near] < 1e-6).all()  # joints out of the kernels' reach see no change
    # ... but attention mixes all joints, so the output changes everywhere
    assert ((y - y2).abs().amax(dim=(0, 2)) > 1e-4).all()
    # samples are independent: permuting the batch permutes the output
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(m(x[perm]), y[perm], atol=1e-6, rtol=1e-6)


def test_spatial_form_takes_any_number_of_joints():
    torch.manual_seed(0)
    m = DynamicConvAttention(16, 17, form="spatial", num_heads=4, kernel_sizes=KERNELS).eval()
    _randomise_eta(m)
    for n in (5, 30):
        x = torch.randn(2, n, 16)
        torch.testing.assert_close(m(x), _reference_attention(m, x), atol=1e-5, rtol=1e-5)


def test_temporal_form_has_frames_as_channels(monkeypatch):
    torch.manual_seed(0)
    dim, frames, t, f = 32, 9, 3, 20
    m = DynamicConvAttention(dim, frames, form="temporal", num_heads=4, kernel_sizes=KERNELS).eval()
    _randomise_eta(m)
    seen = _record_qkv(monkeypatch)
    x = torch.randn(2, frames, dim)
    x2 = x.clone()
    x2[:, t, f] += 1.0  # one feature of one frame
    m(x), m(x2)
    reach = max(KERNELS) // 2
    near = torch.zeros(dim, dtype=torch.bool)
    near[f - reach:f + reach + 1] = True
    for a, b in zip(seen[0], seen[1]):
        diff = (_per_token(a) - _per_token(b)).abs().amax(dim=0)  # (frames, features)
        assert (diff[:, near].amax(dim=1) > 1e-4).all()  # every frame's Q/K/V changes ...
        assert diff[:, ~near].max() < 1e-6               # ... only near the changed feature
    with pytest.raises(ConvformerError, match="9 tokens"):
        m(torch.randn(2, frames + 2, dim))


# ------------------------------------------------------------------------------------------------- lifters
@pytest.mark.parametrize("name,kw,frames_out", [("convformer_pose_t9", {}, 1),
                                                ("convformer_pose_t9", {"seq2seq": True}, 9),
                                                ("poseformer_t9", {"attention": "linear"}, 1),
                                                ("martinez_mlp", {}, 1)])
def test_lifter_output_shape_and_every_parameter_learns(name, kw, frames_out):
    model = _tiny(name, **kw).train()
    frames = model.receptive_field
    x = torch.randn(3, frames, 17, 2)
    out = model(x)
    assert out.shape == (3, frames_out, 17, 3)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not missing


def test_lifter_wrong_window_names_the_receptive_field():
    model = _tiny()
    with pytest.raises(ConvformerError, match="receptive field is 9"):
        model(torch.randn(2, 7, 17, 2))
    with pytest.raises(ConvformerError, match="receptive field is 9"):
        model(torch.randn(2, 9, 16, 2))


def test_martinez_sees_one_frame_only():
    model = _tiny("martinez_mlp")
    assert model(torch.randn(2, 1, 17, 2)).shape == (2, 1, 17, 3)
    with pytest.raises(ConvformerError, match="one frame"):
        model(torch.randn(2, 9, 17, 2))


def test_optimized_lifter_computes_the_fused_kernels_once_and_agrees():
    model = _tiny()
    _randomise_eta(model)
    fast = convformer.optimize(model)
    attn = fast.temporal_blocks[0].attn
    weight, bias = model.temporal_blocks[0].attn.qkv_weight()
    assert attn.fused_weight is not None and torch.equal(attn.fused_weight, weight.detach())
    assert torch.equal(attn.fused_bias, bias.detach())
    x = torch.randn(3, 9, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ predict, lift_sequence
def test_predict_with_flip_tta_averages_the_unflipped_flipped_prediction():
    model = _tiny()
    x = torch.randn(4, 9, 17, 2)
    with torch.no_grad():
        direct = model(x)
        mirrored = flip_pose(model(flip_pose(x)))
        assert (direct - mirrored).abs().max() > 1e-3  # the model is not flip-equivariant: TTA matters
        torch.testing.assert_close(predict(model, x, flip_tta=False), _root_zero(direct))
        torch.testing.assert_close(predict(model, x, flip_tta=True), _root_zero((direct + mirrored) / 2))
        assert direct[..., 0, :].abs().max() > 1e-4  # so zeroing the root is a real step


def test_predict_returns_the_centre_frame_of_seq2seq_models():
    model = _tiny(seq2seq=True)
    x = torch.randn(2, 9, 17, 2)
    with torch.no_grad():
        full = (model(x) + flip_pose(model(flip_pose(x)))) / 2
        assert full.shape == (2, 9, 17, 3)
        out = predict(model, x, flip_tta=True)
    assert out.shape == (2, 1, 17, 3)
    torch.testing.assert_close(out, _root_zero(full[:, 4:5]))


def test_lift_sequence_lifts_every_frame_from_its_edge_padded_window():
    model = _tiny()
    n = 12
    torch.manual_seed(3)
    kp = torch.randn(n, 17, 2)
    out = lift_sequence(model, kp, flip_tta=True, batch_size=5)  # batches of 5 do not divide 12
    assert out.shape == (n, 17, 3)
    for i in (0, 6):
        index = torch.arange(i - 4, i + 5).clamp(0, n - 1)  # frames before the start repeat frame 0
        window = kp[index][None]
        with torch.no_grad():
            expected = (model(window) + flip_pose(model(flip_pose(window)))) / 2
        torch.testing.assert_close(out[i], _root_zero(expected)[0, 0], atol=1e-5, rtol=1e-5)
    assert (out[0] - out[6]).abs().max() > 1e-3


def _root_zero(pose: torch.Tensor) -> torch.Tensor:
    """Predictions are root-relative: predict() sets the root joint to exactly 0."""
    pose = pose.clone()
    pose[..., 0, :] = 0
    return pose
