"""Activations of the MetaFormer baselines (Yu et al., 2022).

StarReLU, ``s * relu(x)**2 + b``, keeps the cheapness of ReLU while its learnable scalar scale and bias
undo the distribution shift of the squared ReLU; SquaredReLU is the plain square used in the MLP head.

Training uses a fused StarReLU (:class:`StarReLUFunction`) with a hand-written backward. Written as four
autograd ops (relu, square, mul, add), StarReLU keeps two full-size tensors alive for the backward pass
(relu(x) and relu(x)**2) and spends about seven memory passes on its gradient. The fused form keeps only
``r = relu(x)`` and derives everything from it:

    d out / d x = 2 s r   (r is zero wherever x <= 0, so the ReLU mask comes for free)
    d out / d s = r**2,   d out / d b = 1

which halves the memory StarReLU holds and takes four passes in the backward. Results are identical
up to float rounding (tested against the plain form and against timm).
"""
import torch
import torch.fx
from torch import nn
import torch.nn.functional as F


class SquaredReLU(nn.Module):
    """relu(x) ** 2 (So et al., Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


def _reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return grad.reshape(like.shape).to(like.dtype)


class StarReLUFunction(torch.autograd.Function):
    """s * relu(x)**2 + b for scalar (shape (1,)) s and b, saving only relu(x) for the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r, scale, bias)
        return torch.addcmul(bias.to(r.dtype), r * scale.to(r.dtype), r)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        r, scale, bias = ctx.saved_tensors
        grad_x = grad_s = grad_b = None
        gr = grad * r
        if ctx.needs_input_grad[1]:
            # sum(grad * r * r), accumulated in float32 even when the activations are bf16/fp16
            grad_s = _reduce_to(torch.dot(gr.reshape(-1).float(), r.reshape(-1).float()), scale)
        if ctx.needs_input_grad[2]:
            grad_b = _reduce_to(grad.sum(dtype=torch.float32), bias)
        if ctx.needs_input_grad[0]:
            grad_x = gr.mul_(2 * scale.to(gr.dtype))
        return grad_x, grad_s, grad_b


def star_relu(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """StarReLU; the fused autograd form whenever a gradient is needed, the plain form otherwise."""
    if not torch.jit.is_scripting():  # TorchScript cannot compile custom autograd functions
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or bias.requires_grad)
        if needs_grad and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            return StarReLUFunction.apply(x, scale, bias)
    return scale * torch.square(F.relu(x)) + bias


torch.fx.wrap("star_relu")  # a leaf for FX tracing (its branch looks at autograd state, not at values)


class StarReLU(nn.Module):
    """s * relu(x) ** 2 + b with learnable scalars s (init 1) and b (init 0), one pair per instance."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0, learnable: bool = True):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), float(bias)), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return star_relu(x, self.scale, self.bias)
