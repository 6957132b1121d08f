"""Parameter and MAC counts.

MACs come from ``torch.utils.flop_counter`` (FLOPs = 2 x MACs), which counts matrix products and
convolutions, the same operations the papers' MAC figures are dominated by.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable: bool = True) -> int:
    """Trainable parameters, or (trainable=False) parameters that are frozen plus saved buffers of
    frozen weights such as RandFormer's mixing matrices."""
    if trainable:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return frozen + sum(b.numel() for n, b in model.named_buffers() if n.endswith("random_matrix"))


@torch.no_grad()
def count_macs(model: nn.Module, input_size=(3, 224, 224), batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass on a zero input, per image.

    Attention runs through the math backend while counting: the fused CPU kernel has no FLOP formula
    in PyTorch and would count as zero, while its math form is two batched matrix products."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros((batch, *input_size), dtype=param.dtype, device=param.device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2 // batch
