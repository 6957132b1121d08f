"""3-D human pose lifting with the ConvFormer lifter (dynamic multi-headed convolutional attention):
the model, VideoPose3D/Human3.6M data and the synthetic generator, keypoint formats, the training task,
MPJPE/P-MPJPE/MPJVE tables, plots and the ``convformer pose`` commands.

Importing this package registers the lifters and their fast path (fused Q/K/V kernels) with the core.
"""
from __future__ import annotations

from convformer.optimize import FastPath, register_fast_path
from convformer.pose.lifter import PoseLifter

# the fused kernels are computed once; exported, they become graph constants (the default export form)
register_fast_path(PoseLifter, FastPath(prepare=lambda model, fold, compile, int8: model.fuse()))
