"""Super-resolution with CFSR: the model and its folded, striped fast path, SR data (folders, given LR/HR
pairs, the bundled photos), PSNR/SSIM, tiled inference, the training task and the ``convformer sr``
commands.

Importing this package registers the CFSR models and their fast path with the core.
"""
from __future__ import annotations

from convformer.optimize import FastPath, optimize, register_fast_path
from convformer.sr.cfsr import CFSR
from convformer.sr.cfsr_fast import FastCFSR


def _fast_cfsr(model, fold: bool, compile: bool, int8: bool):
    # int8 swaps modules, which the striped fast path (fused kernels) does not have: use the merged net
    return model.merge() if compile or not fold or int8 else FastCFSR(model)


# the export form is the merged network: the striped path is eager Python a graph export would unroll
register_fast_path(CFSR, FastPath(prepare=_fast_cfsr, int8=lambda m: m, export=lambda m: optimize(m, fold=False)))
