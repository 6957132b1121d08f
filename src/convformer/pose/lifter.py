"""3-D human pose lifting: 2-D keypoint sequences in, 3-D joint positions out.

Three lifters share one interface, ``(B, T, J, 2)`` normalised screen coordinates in and
``(B, 1, J, 3)`` root-relative camera-space joints out (the centre frame of the window), or
``(B, T, J, 3)`` with ``seq2seq=True``:

* ``PoseLifter`` with convolutional attention: ConvFormer (Diaz-Arias & Shin, arXiv 2304.02147). Each
  joint's (u, v) is embedded (Linear 2 -> d) and given a learned joint position embedding; spatial blocks
  attend over the J joints of each frame; each frame is then flattened to J*d features, given a learned
  temporal embedding, and temporal blocks attend over the T frames. The head maps every frame back to J*3
  coordinates and a pointwise Conv1d over the frames (T -> 1) produces the centre frame. Blocks are
  pre-LayerNorm transformer blocks whose mixer is :class:`~convformer.mixers.DynamicConvAttention`.
* ``PoseLifter`` with ``attention="linear"``: the same network with PoseFormer's plain linear-projection
  attention (Zheng et al., ICCV 2021), the design ConvFormer sets out to shrink.
* ``ResidualMLPLifter``: the fully-connected baseline of Martinez et al. (ICCV 2017), one frame in.

Choices the ConvFormer paper leaves open are listed on the model cards and in docs/pose.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from convformer.errors import ConvformerError
from convformer.layers import DropPath, Mlp
from convformer.mixers import DynamicConvAttention


#: how a frame's J x d spatial features are laid out on the temporal blocks' feature axis: "joint"-major keeps
#: each joint's d channels together (a temporal kernel mostly mixes one joint's channels), "feature"-major puts
#: the J joints side by side for every channel (a kernel always mixes neighbouring joints of one channel)
FLATTEN_ORDERS = ("joint", "feature")
#: the lifter options `pose train` accepts and weight files record (see PoseTrainConfig)
ARCH_OPTIONS = ("embed_dim", "spatial_depth", "temporal_depth", "num_heads", "mlp_ratio", "kernel_sizes",
                "attention", "flatten")


@dataclass(frozen=True)
class PoseLifterConfig:
    num_frames: int = 9            # receptive field T (odd: the centre frame is predicted)
    num_joints: int = 17
    in_chans: int = 2
    embed_dim: int = 32            # d; temporal features are num_joints * embed_dim
    spatial_depth: int = 2
    temporal_depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 2.0
    kernel_sizes: tuple = (7, 7, 7)
    attention: str = "conv"        # "conv" (ConvFormer) or "linear" (PoseFormer)
    drop_rate: float = 0.0         # dropout after attention projections and MLPs
    attn_drop_rate: float = 0.0    # dropout on attention weights
    drop_path_rate: float = 0.0    # stochastic depth, linearly increasing over the blocks
    seq2seq: bool = False          # predict every frame instead of the centre one
    flatten: str = "joint"         # frame -> temporal features: "joint"-major (j*d + c) or "feature"-major (c*J + j)


class PoseBlock(nn.Module):
    """x + drop_path(attention(LN(x))), then x + drop_path(MLP(LN(x))), on (B, N, C) token sequences."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, act=nn.GELU, bias=True, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PoseLifter(nn.Module):
    """Spatial-temporal transformer lifter (ConvFormer or, with linear attention, PoseFormer)."""

    def __init__(self, cfg: PoseLifterConfig):
        super().__init__()
        if cfg.attention not in ("conv", "linear"):
            raise ConvformerError(f"attention must be 'conv' or 'linear', got {cfg.attention!r}")
        if cfg.flatten not in FLATTEN_ORDERS:
            raise ConvformerError(f"flatten must be one of {', '.join(FLATTEN_ORDERS)}, got {cfg.flatten!r}")
        if cfg.num_frames < 1 or cfg.num_frames % 2 == 0:
            raise ConvformerError(f"num_frames must be a positive odd number (the window is centred on the frame "
                                  f"it lifts), got {cfg.num_frames}")
        self.cfg = cfg
        t, j, d = cfg.num_frames, cfg.num_joints, cfg.embed_dim
        feat = j * d
        self.receptive_field, self.num_joints, self.seq2seq = t, j, cfg.seq2seq
        self.joint_embed = nn.Linear(cfg.in_chans, d)
        self.joint_pos = nn.Parameter(torch.zeros(1, j, d))
        self.temporal_pos = nn.Parameter(torch.zeros(1, t, feat))
        nn.init.trunc_normal_(self.joint_pos, std=0.02)
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        depth = cfg.spatial_depth + cfg.temporal_depth
        rates = torch.linspace(0, cfg.drop_path_rate, depth).tolist() if depth else []
        linear = cfg.attention == "linear"

        def mixer(dim, tokens, form):
            return DynamicConvAttention(dim, tokens, form=form, num_heads=cfg.num_heads,
                                        kernel_sizes=cfg.kernel_sizes, linear=linear,
                                        attn_drop=cfg.attn_drop_rate, proj_drop=cfg.drop_rate)

        self.spatial_blocks = nn.ModuleList(
            PoseBlock(d, mixer(d, j, "spatial"), cfg.mlp_ratio, cfg.drop_rate, rates[i])
            for i in range(cfg.spatial_depth))
        self.spatial_norm = nn.LayerNorm(d)
        self.temporal_blocks = nn.ModuleList(
            PoseBlock(feat, mixer(feat, t, "temporal"), cfg.mlp_ratio, cfg.drop_rate, rates[cfg.spatial_depth + i])
            for i in range(cfg.temporal_depth))
        self.temporal_norm = nn.LayerNorm(feat)
        self.head = nn.Linear(feat, j * 3)
        # pointwise conv over the frames: a learned weighting of all frames' predictions for the centre one
        self.frame_pool = None if cfg.seq2seq else nn.Conv1d(t, 1, 1)
        self.apply(_init_linear)

    def fuse(self) -> "PoseLifter":
        """Inference: fuse every convolutional attention's Q/K/V kernels once (see DynamicConvAttention.fuse)."""
        for blk in [*self.spatial_blocks, *self.temporal_blocks]:
            blk.attn.fuse()
        return self

    def check_input(self, x: torch.Tensor) -> None:
        t, j, c = self.receptive_field, self.num_joints, self.cfg.in_chans
        if x.ndim != 4 or x.shape[1:] != (t, j, c):
            raise ConvformerError(f"expected keypoints shaped (B, {t}, {j}, {c}) (batch, frames, joints, u/v), "
                                  f"got {tuple(x.shape)}; this model's receptive field is {t} frames")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 2) -> per-frame features (B, T, J*d) after the temporal blocks."""
        self.check_input(x)
        b, t, j, _ = x.shape
        z = self.joint_embed(x.reshape(b * t, j, -1)) + self.joint_pos
        for blk in self.spatial_blocks:
            z = blk(z)
        z = self.spatial_norm(z)                         # (B*T, J, d)
        if self.cfg.flatten == "feature":
            z = z.transpose(1, 2)                        # (B*T, d, J): feature-major flattening
        z = z.reshape(b, t, -1) + self.temporal_pos
        for blk in self.temporal_blocks:
            z = blk(z)
        return self.temporal_norm(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.forward_features(x))          # (B, T, J*3)
        if self.frame_pool is not None:
            z = self.frame_pool(z)                       # (B, 1, J*3)
        return z.reshape(z.shape[0], z.shape[1], self.num_joints, 3)


class ResidualMLPLifter(nn.Module):
    """Martinez et al. (ICCV 2017): Linear(2J -> 1024), then residual stages of two
    [Linear, BatchNorm, ReLU, Dropout] layers, then Linear(1024 -> 3J); one frame in, one out."""

    def __init__(self, num_joints: int = 17, hidden: int = 1024, num_stages: int = 2, dropout: float = 0.5,
                 **_):
        super().__init__()
        self.receptive_field, self.num_joints, self.seq2seq = 1, num_joints, False
        self.inp = nn.Sequential(nn.Linear(2 * num_joints, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Dropout(dropout))

        def layer():
            return [nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout)]

        self.stages = nn.ModuleList(nn.Sequential(*layer(), *layer()) for _ in range(num_stages))
        self.out = nn.Linear(hidden, 3 * num_joints)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1:] != (1, self.num_joints, 2):
            raise ConvformerError(f"expected keypoints shaped (B, 1, {self.num_joints}, 2) (one frame), "
                                  f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h = self.inp(x.reshape(x.shape[0], -1))
        for stage in self.stages:
            h = h + stage(h)
        return self.out(h).reshape(x.shape[0], 1, self.num_joints, 3)


def _init_linear(m: nn.Module) -> None:
    # convolutions too: with PyTorch's default (larger) conv init the ConvFormer lifter sat at the mean pose
    # for ~3 epochs before learning (synthetic set, T=9: 50.2 mm after 12 epochs vs 41.2 mm with this init)
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_lifter(base: PoseLifterConfig, **kwargs) -> PoseLifter:
    """A lifter from a registered configuration; keyword arguments override fields (e.g. ``seq2seq``,
    ``drop_path_rate``, ``num_frames``). Classification-only arguments from the engine are ignored."""
    known = set(PoseLifterConfig.__dataclass_fields__)
    unknown = set(kwargs) - known - {"num_classes", "img_size", "drop_rate_head"}
    if unknown:
        raise ConvformerError(f"unknown lifter option(s) {sorted(unknown)}; valid: {sorted(known)}")
    values = {k: (tuple(v) if k == "kernel_sizes" else v) for k, v in kwargs.items() if k in known}
    return PoseLifter(replace(base, **values))


# ---- registry --------------------------------------------------------------------------------------------
from convformer.registry import ModelCard, register_model  # noqa: E402

PAPER = ("Diaz-Arias, Shin. ConvFormer: Parameter Reduction in Transformer Models for 3D Human Pose Estimation "
         "by Leveraging Dynamic Multi-Headed Convolutional Attention. The Visual Computer 40 (2024); "
         "arXiv:2304.02147")
POSEFORMER_PAPER = "Zheng et al. 3D Human Pose Estimation with Spatial and Temporal Transformers. ICCV 2021"
MARTINEZ_PAPER = "Martinez et al. A simple yet effective baseline for 3d human pose estimation. ICCV 2017"
PREPROCESSING = dict(keypoints="Human3.6M 17-joint order (COCO-17 is mapped, see docs/pose.md)",
                     normalisation="screen: x / w * 2 - [1, h / w]", output="root-relative camera-space metres")
CONVFORMER_NOTES = (
    "Q/K/V: per projection three Conv1d (kernels 7,7,7, with bias) mixed by softmax(eta); spatial form "
    "convolves the 32 embedding channels along the 17 joints, temporal form the T frame channels along the "
    "544 joint features.",
    "Attention output projection: a kernel-1 conv over the same channel axis (32->32 spatial, T->T "
    "temporal); without the T->T map the count at T=243 is 10.12M, not the paper's 10.24M.",
    "Blocks: pre-LayerNorm, FFN ratio 2 with GELU and biases, 8 heads, a final LayerNorm after the spatial "
    "and after the temporal stack (as PoseFormer); learned joint and temporal position embeddings.",
    "Head: Linear(544 -> 51) per frame, then Conv1d(T -> 1, kernel 1) over the frames for the centre frame.",
    "Paper table 3 read as (embed d, spatial blocks, temporal blocks) at T=9 with kernels (7,7,7): "
    "d=16 2/2 0.659M (paper 0.65), 2/4 1.265M (1.26), 4/2 0.694M (0.69); d=32 2/2 2.561M (2.56), "
    "2/4 4.946M (4.95), 4/2 2.701M (2.70). The table's row labels are not available here: this reading "
    "is ours and the two d=16 rows match only if the paper truncated.",
)
# paper numbers (Human3.6M): T=243 GT 2-D 29.8 mm; CPN 43.2 / 34.2 (P1 / P2); T=143 MPJVE 2.1 mm
_PAPER_METRICS = {243: {"h36m_gt_mpjpe_mm": 29.8, "h36m_cpn_mpjpe_mm": 43.2, "h36m_cpn_p_mpjpe_mm": 34.2},
                  143: {"h36m_cpn_mpjve_mm": 2.1}}
_PAPER_PARAMS = {9: 2.56, 243: 10.24}
# params / MACs per sequence (one centre frame), as counted by bench.count_params / count_macs
_CONVFORMER_COUNTS = {1: (2_545_773, 3_364_691), 9: (2_560_533, 32_162_283), 27: (2_653_647, 109_177_281),
                      81: (3_430_653, 441_745_731), 143: (5_243_347, 1_011_381_085),
                      243: (10_240_647, 2_353_162_185)}
_POSEFORMER_COUNTS = {9: (9_562_557, 91_521_387), 27: (9_572_367, 276_679_233), 81: (9_601_797, 849_073_347),
                      243: (9_690_087, 2_718_540_873)}


def _card(name, family, paper, params_macs, frames, notes, paper_params=None, metrics=None, code=()):
    params, macs = params_macs
    return ModelCard(name=name, family=family, task="pose", params=params, macs=macs, input_size=(frames, 17, 2),
                     paper_params_m=paper_params, metrics=metrics or {}, paper=paper, code=code,
                     preprocessing=PREPROCESSING, notes=notes)


CONVFORMER_POSE = PoseLifterConfig()
POSEFORMER = PoseLifterConfig(attention="linear", spatial_depth=4, temporal_depth=4)

for _t in (1, 9, 27, 81, 143, 243):
    register_model(_card(
        f"convformer_pose_t{_t}", "convformer_pose", PAPER, _CONVFORMER_COUNTS.get(_t, (0, 0)), _t,
        CONVFORMER_NOTES + (("Single-frame variant for ablations (not in the paper).",) if _t == 1 else ()),
        paper_params=_PAPER_PARAMS.get(_t), metrics=_PAPER_METRICS.get(_t)),
        lambda t=_t, **kw: build_lifter(replace(CONVFORMER_POSE, num_frames=t), **kw))
for _t in (9, 27, 81, 243):
    register_model(_card(
        f"poseformer_t{_t}", "poseformer", POSEFORMER_PAPER, _POSEFORMER_COUNTS.get(_t, (0, 0)), _t,
        ("PoseFormer's configuration: linear Q/K/V and output projections, 4 spatial + 4 temporal blocks, "
         "d=32, 8 heads, MLP ratio 2; head as ConvFormer's (Linear per frame, then Conv1d over frames) so "
         "the attention and depth are the only differences.",
         "PoseFormer reports 9.6M parameters at T=81 (its head puts a LayerNorm before the linear layer; "
         "ours has none, 1,088 fewer)."
         + (" T=243 is not in the PoseFormer paper (registered for speed comparisons)." if _t == 243 else "")),
        paper_params=9.6 if _t == 81 else None, code=("https://github.com/zczcwh/PoseFormer",)),
        lambda t=_t, **kw: build_lifter(replace(POSEFORMER, num_frames=t), **kw))
register_model(_card(
    "martinez_mlp", "martinez", MARTINEZ_PAPER, (4_296_755, 4_281_344), 1,
    ("Residual MLP: Linear(34 -> 1024) + BatchNorm + ReLU + Dropout 0.5, two residual stages of two such "
     "layers, Linear(1024 -> 51); one frame in.",),
    code=("https://github.com/una-dinosauria/3d-pose-baseline",)),
    lambda **kw: ResidualMLPLifter(**kw))
