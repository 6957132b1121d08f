"""`convformer pose train`: the pose lifter's training configuration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from convformer.engine.config import EngineOptions


@dataclass
class PoseTrainConfig(EngineOptions):
    """`convformer pose train`: the shared training options plus the pose data's."""
    model: str = "convformer_pose_t27"
    data: str = "synthetic"              # "synthetic" (generated on the fly) or a folder of VideoPose3D files
    keypoints: str = "gt"                # 2-D file data_2d_h36m_<keypoints>.npz in the folder (e.g. cpn_ft_h36m_dbb)
    train_subjects: str = "S1,S5,S6,S7,S8"
    test_subjects: str = "S9,S11"
    train_cameras: Optional[str] = None  # camera indices (0-3) to train on, e.g. "0,1,2" [all]
    test_cameras: Optional[str] = None   # camera indices to validate on [all]
    actions: Optional[str] = None        # comma-separated action names to keep [all]
    stride: int = 1                      # training windows every N frames
    val_stride: int = 1                  # validation windows every N frames
    flip: bool = True                    # flip augmentation (x -> -x, left/right joints swapped)
    test_flip: bool = True               # test-time flip augmentation in validation
    seq2seq: bool = False                # supervise every frame of the window (model predicts all T)
    attention: Optional[str] = None      # "conv" or "linear": override the lifter's attention (ablations)
    # architecture overrides of the transformer lifters (None: the registered model's value); recorded in
    # the weight file, so `pose eval`, `pose lift` and load_lifter rebuild the same network
    embed_dim: Optional[int] = None      # d, per-joint embedding width (temporal features: 17 x d)
    spatial_depth: Optional[int] = None  # spatial blocks
    temporal_depth: Optional[int] = None # temporal blocks
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    kernel_sizes: Optional[str] = None   # Q/K/V kernel sizes of the convolutional attention, e.g. "3,5,7"
    flatten: Optional[str] = None        # "joint" or "feature": the order of a frame's features (docs/pose.md)
    synthetic_frames: int = 600          # frames per synthetic sequence (data=synthetic)
    synthetic_noise: float = 0.0         # 2-D Gaussian noise in pixels (data=synthetic)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    lr_schedule: str = "cosine"          # "cosine" (to min_lr) or "exponential" (x lr_decay per epoch)
    lr_decay: float = 0.95               # per-epoch factor of the exponential schedule (the paper's)
    drop_path_rate: float = 0.1

    def task(self):
        from convformer.pose.task import PoseLifting
        return PoseLifting()
