"""Super-resolution metrics in the convention of the SR literature (BasicSR's ``calculate_psnr`` /
``calculate_ssim`` with ``test_y_channel=True``):

* images are RGB in [0, 1] (tensors (3, H, W) or (B, 3, H, W)); they are quantised to 8 bits first, as
  the published numbers are computed on saved PNGs;
* only the luma channel counts: Y = 16 + (65.481 R + 128.553 G + 24.966 B) on the [0, 1] scale
  (ITU-R BT.601, range 16..235);
* ``crop_border`` pixels (the scale factor, by convention) are removed on every side;
* PSNR over the Y channel with peak 255; SSIM with an 11x11 Gaussian window (sigma 1.5),
  C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged over the valid (unpadded) region.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convformer.errors import ConvformerError


def to_y(img: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> Y in [16, 235] (float64), shape (B, 1, H, W); quantised to 8 bits first."""
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[1] != 3:
        raise ConvformerError(f"expected RGB images (B, 3, H, W) or (3, H, W), got {tuple(img.shape)}")
    rgb = (img.double().clamp(0, 1) * 255).round()
    w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    return 16.0 + (rgb * w).sum(1, keepdim=True) / 255.0


def _prepare(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ConvformerError(f"image sizes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    a, b = to_y(sr), to_y(hr)
    if crop_border:
        a, b = a[..., crop_border:-crop_border, crop_border:-crop_border], \
            b[..., crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> float:
    """Mean over the batch of the Y-channel PSNR in dB (inf for identical images)."""
    a, b = _prepare(sr, hr, crop_border)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    values = [float("inf") if m == 0 else 10 * math.log10(255.0 ** 2 / float(m)) for m in mse]
    return sum(values) / len(values)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The 1-D Gaussian; the 2-D window is its outer product, so filtering is a row pass then a column pass
    (22 instead of 121 multiply-adds per pixel: 5-6x faster on large validation images, same values up to
    float64 rounding)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Valid (unpadded) 2-D Gaussian filtering of (N, 1, H, W) as two 1-D passes."""
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> float:
    """Mean over the batch of the Y-channel SSIM (1.0 for identical images)."""
    a, b = _prepare(sr, hr, crop_border)
    if min(a.shape[-2:]) < 11:
        raise ConvformerError(f"SSIM needs images of at least 11x11 after cropping, got {tuple(a.shape[-2:])}")
    g = _gaussian_window().to(a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = len(a)
    # the five local moments in one filtering call: batch entries [a, b, a^2, b^2, ab]
    mu_a, mu_b, aa, bb, ab = _filter(torch.cat([a, b, a * a, b * b, a * b]), g).split(n)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())
