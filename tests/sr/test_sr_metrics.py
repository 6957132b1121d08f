"""PSNR/SSIM on the Y channel with border crop, against known values and an independent implementation."""
import math

import numpy as np
import pytest
import torch

from convformer.sr.metrics import psnr_y, ssim_y, to_y


def test_identical_images_are_infinite_psnr_and_unit_ssim():
    img = torch.rand(3, 40, 40)
    assert psnr_y(img, img) == math.inf
    assert ssim_y(img, img) == pytest.approx(1.0, abs=1e-12)


def test_luma_of_pure_colours_is_bt601():
    white, black = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    assert to_y(white).unique().item() == pytest.approx(235.0)
    assert to_y(black).unique().item() == pytest.approx(16.0)


def test_known_constant_error_gives_the_textbook_psnr():
    hr = torch.full((3, 32, 32), 100 / 255)
    sr = torch.full((3, 32, 32), 110 / 255)  # every RGB value off by 10 -> Y off by 10 * 219/255
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(sr, hr) == pytest.approx(10 * math.log10(255 ** 2 / dy ** 2), abs=1e-6)


def test_border_crop_ignores_edge_damage():
    hr = torch.rand(3, 40, 40)
    sr = hr.clone()
    sr[:, :2, :] = 0  # only the top 2 rows differ
    assert psnr_y(sr, hr, crop_border=2) == math.inf
    assert psnr_y(sr, hr, crop_border=0) < 40


def test_noise_psnr_and_ssim_agree_with_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 64, 64, generator=g)
    sr = (hr + 0.05 * torch.randn(3, 64, 64, generator=g)).clamp(0, 1)
    y_sr, y_hr = to_y(sr)[0, 0, 4:-4, 4:-4].numpy(), to_y(hr)[0, 0, 4:-4, 4:-4].numpy()
    assert psnr_y(sr, hr, 4) == pytest.approx(peak_signal_noise_ratio(y_hr, y_sr, data_range=255), abs=1e-9)
    ref = structural_similarity(y_hr, y_sr, data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim_y(sr, hr, 4) == pytest.approx(ref, abs=2e-3)  # skimage averages over a cropped region
    assert 0.0 < ssim_y(sr, hr, 4) < 0.99
