"""Super-resolution inference: whole images or tiles, for images too large to upscale in one pass.

Tiling splits the LR image into ``tile`` x ``tile`` cores; each core is upscaled together with up to
``overlap`` pixels of surrounding context on every side, and only the core's part of the result is kept.
The cores tile the output without seams or blending, and with enough context (more than the network's
receptive field) the result equals the untiled one; with less it differs only near core edges.
"""
from __future__ import annotations

import torch

from ..errors import ConvformerError


@torch.inference_mode()
def upscale(model, lr: torch.Tensor, tile: int | None = None, overlap: int = 32) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, sH, sW) in [0, 1]; ``tile`` (LR pixels) bounds the memory used."""
    scale = model.scale
    if not tile or (lr.shape[-2] <= tile and lr.shape[-1] <= tile):
        return model(lr).clamp(0, 1)
    if tile < 8 or overlap < 0:
        raise ConvformerError(f"--tile must be at least 8 and --tile-overlap at least 0 (got {tile}, {overlap})")
    b, _, h, w = lr.shape
    out = lr.new_empty(b, 3, h * scale, w * scale)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            cy0, cx0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            cy1, cx1 = min(y1 + overlap, h), min(x1 + overlap, w)
            sr = model(lr[:, :, cy0:cy1, cx0:cx1])
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                sr[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out.clamp(0, 1)
