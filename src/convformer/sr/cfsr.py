"""CFSR: ConvFormer-based efficient image super-resolution (Wu, Jiang, Jiang, Liu; IEEE TIP 2024).

The MetaFormer block with a large-kernel ConvMod mixer and an edge-preserving FFN, arranged as flat
residual groups at one resolution (no pyramid):

    x - mean -> conv 3x3 (3 -> C) = f
    f -> [group: b = 6 x block, then b + Linear(b)] x 2 -> LayerNorm -> conv 3x3 -> + f
    -> conv 3x3 (C -> 3 s^2) -> PixelShuffle(s) -> + mean

Blocks are ``x + g1 * ConvMod(LN(x))`` and ``x + g2 * EdgeFFN(LN(x))`` with per-channel layer scales
``g`` (init 1e-6). Activations are channels-last (B, H, W, C) inside; images are (B, 3, H, W) in [0, 1].
The model exists in training form (edge branches separate) and inference form (merged); ``merge()``
turns the first into the second with the same outputs. Weights of either form load into either
(``match_form``): merged weights into the training form with the edge scales set to zero (the same
function, so fine-tuning from the official checkpoints works), training-form weights into the merged
form folded as ``merge()`` folds them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from convformer.layers import ChannelLayerNorm
from convformer.mixers.convmod import EDGE_BRANCHES, ConvModMixer, EdgeFFN, edge_mask
from convformer.registry import ModelCard, WeightSource, register_model
from convformer.weights.convert import apply_rules

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean the official code subtracts


@dataclass(frozen=True)
class CFSRConfig:
    scale: int = 4
    dim: int = 48
    depths: tuple = (6, 6)
    kernel_size: int = 9
    ffn_ratio: float = 2.0
    layer_scale: float = 1e-6
    img_range: float = 1.0


def check_images(x: torch.Tensor) -> None:
    """Both CFSR forms take a batch of RGB images; anything else gets a clear error."""
    if x.ndim != 4 or x.shape[1] != 3:
        from convformer.errors import ConvformerError
        raise ConvformerError(f"CFSR expects images (B, 3, H, W), got shape {tuple(x.shape)}")


class CFSRBlock(nn.Module):
    def __init__(self, cfg: CFSRConfig, merged: bool):
        super().__init__()
        dim = cfg.dim
        self.norm1 = ChannelLayerNorm(dim, eps=1e-6, bias=True)
        self.mixer = ConvModMixer(dim, cfg.kernel_size)
        self.layer_scale1 = nn.Parameter(torch.full((dim,), cfg.layer_scale))
        self.norm2 = ChannelLayerNorm(dim, eps=1e-6, bias=True)
        self.ffn = EdgeFFN(dim, cfg.ffn_ratio, merged=merged)
        self.layer_scale2 = nn.Parameter(torch.full((dim,), cfg.layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(x, self.mixer(self.norm1(x)), self.layer_scale1)
        return torch.addcmul(x, self.ffn(self.norm2(x)), self.layer_scale2)


class CFSRGroup(nn.Module):
    """Blocks, then a pointwise layer with a skip around it: y = b + Linear(b), b = blocks(x).

    (The skip starts after the blocks, not at the group input: that is what the official code computes,
    and the released weights expect it.)"""

    def __init__(self, cfg: CFSRConfig, depth: int, merged: bool):
        super().__init__()
        self.blocks = nn.Sequential(*[CFSRBlock(cfg, merged) for _ in range(depth)])
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.proj(x) + x


class CFSR(nn.Module):
    num_classes = 0

    def __init__(self, cfg: CFSRConfig, merged: bool = False):
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.scale
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, cfg.dim, 3, padding=1)
        self.groups = nn.ModuleList([CFSRGroup(cfg, d, merged) for d in cfg.depths])
        self.norm = ChannelLayerNorm(cfg.dim, eps=1e-6, bias=True)
        self.conv_after_body = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(cfg.dim, 3 * cfg.scale ** 2, 3, padding=1),
                                      nn.PixelShuffle(cfg.scale))

    @property
    def merged(self) -> bool:
        return all(b.ffn.merged for g in self.groups for b in g.blocks)

    @staticmethod
    def convert_weights(state: dict, own: dict) -> tuple[dict, str]:
        """Hook for ``load_weights``: (state dict in our names and this model's form, detected layout)."""
        official = cfsr_official_to_ours(state, own)
        return match_form(official if official is not None else state, own), \
            "official" if official is not None else "convformer"

    def merge(self) -> "CFSR":
        """Turn the training form into the inference form in place (same outputs); returns self."""
        for g in self.groups:
            for b in g.blocks:
                b.ffn.merge()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Body features (B, C, H, W) at the input resolution, before the upsampler."""
        x = (x - self.mean) * self.cfg.img_range
        first = self.conv_first(x)
        # The blocks work on (B, H, W, C): one copy into that memory order, so the residual stream's ops
        # run on contiguous rows instead of strided views (x4 at 320x180: 0.8-0.9 s instead of 1.0-1.1 s)
        h = first.permute(0, 2, 3, 1).contiguous()
        for group in self.groups:
            h = group(h)
        h = self.norm(h).permute(0, 3, 1, 2)
        return self.conv_after_body(h) + first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, sH, sW)."""
        check_images(x)
        out = self.upsample(self.forward_features(x))
        return out / self.cfg.img_range + self.mean


# ---- the official layout (Aitical/CFSR, basicsr) -----------------------------------------------------
_OFFICIAL = [
    (r"^layers\.(\d+)\.blocks\.(\d+)\.layer_scale_(\d)$", r"groups.\1.blocks.\2.layer_scale\3"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.norm\.", r"groups.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.a\.0\.", r"groups.\1.blocks.\2.mixer.a_proj."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.a\.2\.lkb_reparam\.", r"groups.\1.blocks.\2.mixer.a_dw."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.(v|proj)\.", r"groups.\1.blocks.\2.mixer.\3."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.norm\.", r"groups.\1.blocks.\2.norm2."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"groups.\1.blocks.\2.ffn.\3."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.pos\.", r"groups.\1.blocks.\2.ffn.dw."),
    (r"^layers\.(\d+)\.conv\.", r"groups.\1.proj."),
]
_EDGE_OFFICIAL = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.(?:(scale)_(sobel_x|sobel_y|laplacian)|"
                            r"(sobel_x|sobel_y|laplacian)_(bias))$")


def cfsr_official_to_ours(state: dict, own: dict) -> dict | None:
    """Rename an official CFSR state dict to ours, or return None if it is not in that layout.

    1x1-conv weights become Linear weights; unmerged official edge parameters map to ours; the fixed
    masks are dropped (ours are built in)."""
    if not any(k.startswith("layers.0.blocks.0.attn.") for k in state):
        return None
    out = {}
    for key, value in state.items():
        if ".mask_" in key:
            continue
        m = _EDGE_OFFICIAL.match(key)
        if m:
            g, b = m.group(1), m.group(2)
            kind = m.group(4) or m.group(5)
            part = "scale" if m.group(3) else "bias"
            out[f"groups.{g}.blocks.{b}.ffn.{kind}_{part}"] = value.reshape(-1)
            continue
        new = apply_rules(_OFFICIAL, key)
        if new in own and value.ndim == 4 and own[new].ndim == 2:
            value = value.reshape(own[new].shape)  # 1x1 conv -> Linear
        out[new] = value
    return out


def _is_edge_key(key: str) -> bool:
    return any(key.endswith(f".ffn.{k}_{p}") for k in EDGE_BRANCHES for p in ("scale", "bias"))


def match_form(state: dict, own: dict) -> dict:
    """Make a state dict of either form fit the model's form, keeping the function it computes.

    Merged weights into the training form: the edge branches start at zero. Training-form weights into
    the merged form: the edge branches are folded into the 3x3 depthwise kernels, as ``merge()`` does."""
    state = dict(state)
    for key, ref in own.items():
        if key not in state and _is_edge_key(key):
            state[key] = torch.zeros_like(ref)
    folded = [k for k in state if _is_edge_key(k) and k not in own]
    if folded:
        for prefix in sorted({k.rsplit(".", 1)[0] for k in folded}):  # ...ffn
            weight, bias = state[f"{prefix}.dw.weight"].clone(), state[f"{prefix}.dw.bias"].clone()
            for kind in EDGE_BRANCHES:
                weight += state.pop(f"{prefix}.{kind}_scale")[:, None, None, None] * edge_mask(kind)
                bias += state.pop(f"{prefix}.{kind}_bias")
            state[f"{prefix}.dw.weight"], state[f"{prefix}.dw.bias"] = weight, bias
    return state


# ---- registry --------------------------------------------------------------------------------------------
PAPER = "Wu, Jiang, Jiang, Liu. Transforming Image Super-Resolution: A ConvFormer-based Efficient Approach. " \
        "IEEE TIP 2024 (arXiv:2401.05633)"
CODE = ("https://github.com/Aitical/CFSR",)
# (params of the released merged form, as summed from the official .pth files; MACs for a 1280x720
# output as counted by torch.utils.flop_counter)
_COUNTS = {2: (291_324, 65_061_273_600), 3: (297_819, 29_533_455_360), 4: (306_912, 17_161_113_600)}
# (Set5, Set14, B100, Urban100, Manga109) PSNR/SSIM from the official README (x4 given in REFERENCE.md)
_METRICS = {4: {"Set5": (32.33, 0.8964), "Set14": (28.73, 0.7842), "B100": (27.63, 0.7381),
                "Urban100": (26.21, 0.7897), "Manga109": (30.72, 0.9111)}}


def _build(scale: int, merged: bool = True, **kwargs) -> CFSR:
    """Inference (merged) form by default, as the official code builds it; ``merged=False`` for training."""
    return CFSR(CFSRConfig(scale=scale, **kwargs), merged=merged)


def output_size_macs(scale: int) -> tuple:
    """Input size whose output is 1280x720 (the convention of SR efficiency tables)."""
    return (3, 720 // scale, 1280 // scale)


for _s in (2, 3, 4):
    _params, _macs = _COUNTS[_s]
    register_model(ModelCard(
        name=f"cfsr_x{_s}", family="cfsr", task="super-resolution", params=_params, macs=_macs,
        input_size=output_size_macs(_s),
        metrics={f"{k}_psnr_ssim": v for k, v in _METRICS.get(_s, {}).items()}, paper=PAPER, code=CODE,
        weights=(WeightSource(tag="official", repo_id="github:Aitical/CFSR/model_zoo",
                              filename=f"CFSR_x{_s}.pth", layout="official", num_classes=0,
                              input_size=720 // _s, onnx=f"CFSRx{_s}.onnx"),),
        preprocessing=dict(range=(0.0, 1.0), color="RGB", scale=_s),
        notes=("Parameters counted in the inference (merged) form, as released; the training form adds "
               "6 scalars per hidden channel per block for the edge branches.",
               "MACs are counted for a 1280x720 output (input 1280/s x 720/s; 426x240 for x3); the "
               "official README gives 17.5G FLOPs for x4.")),
        lambda s=_s, **kw: _build(s, **kw))
