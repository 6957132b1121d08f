import pytest
import torch
from torch import nn

from convformer.layers import ChannelLayerNorm, DropPath, SpatialChannelNorm, SquaredReLU, StarReLU
from convformer.mixers import PoolingMixer, RandomMixer
from convformer.errors import ConvformerError


def test_starrelu_formula_and_learnable_scalars():
    act = StarReLU()
    with torch.no_grad():
        act.scale.fill_(0.8944)
        act.bias.fill_(-0.4472)
    x = torch.linspace(-3, 3, 13)
    expected = 0.8944 * torch.clamp(x, min=0) ** 2 - 0.4472
    torch.testing.assert_close(act(x), expected)
    assert act.scale.shape == (1,) and act.bias.shape == (1,) and act.scale.requires_grad


def test_squared_relu():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert SquaredReLU()(x).tolist() == [0.0, 0.0, 9.0]


def test_spatial_channel_norm_equals_groupnorm_with_one_group():
    x = torch.randn(2, 5, 6, 8)  # B, H, W, C
    ours = SpatialChannelNorm(8, eps=1e-5, bias=True)
    ref = nn.GroupNorm(1, 8, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(8))
        ours.bias.copy_(torch.randn(8))
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    expected = ref(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    assert SpatialChannelNorm(8).bias is None


def test_channel_layer_norm_has_no_bias_and_normalises_channels():
    norm = ChannelLayerNorm(16)
    assert norm.bias is None and norm.eps == 1e-6
    y = norm(torch.randn(3, 4, 4, 16) * 5 + 2)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 4, 4), atol=1e-5, rtol=0)


def test_pooling_mixer_matches_avgpool_minus_identity():
    x = torch.randn(2, 7, 7, 4)
    ref = nn.AvgPool2d(3, 1, 1, count_include_pad=False)(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) - x
    torch.testing.assert_close(PoolingMixer(4)(x), ref)


def test_droppath_drops_whole_samples_and_rescales():
    dp = DropPath(0.5).train()
    torch.manual_seed(0)
    y = dp(torch.ones(1000, 3, 3))
    per_sample = y.reshape(1000, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6
    assert torch.equal(dp.eval()(torch.ones(4, 2)), torch.ones(4, 2))


def test_random_mixer_is_frozen_row_stochastic_and_checks_size():
    mixer = RandomMixer(8, num_tokens=16, image_size=64, stride=16)
    assert not list(mixer.parameters())  # a buffer: saved, never trained
    torch.testing.assert_close(mixer.random_matrix.sum(-1), torch.ones(16))
    x = torch.randn(2, 4, 4, 8)
    expected = torch.einsum("mn,bnc->bmc", mixer.random_matrix, x.reshape(2, 16, 8)).reshape(2, 4, 4, 8)
    torch.testing.assert_close(mixer(x), expected)
    with pytest.raises(ConvformerError, match="64x64"):
        mixer(torch.randn(2, 5, 5, 8))
