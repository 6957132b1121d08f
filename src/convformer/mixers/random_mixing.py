"""Random token mixing of RandFormer (Yu et al., MetaFormer Baselines).

A frozen N x N row-stochastic matrix, softmax(uniform noise), mixes the N = H*W tokens of a stage. It is
a buffer, not a parameter: it is saved with the weights but never trained. Because it is built for one
token count, a RandFormer only accepts the image size it was created for.
"""
import torch
from torch import nn
import torch.fx

from convformer.errors import ConvformerError


def _check_tokens(x: torch.Tensor, num_tokens: int, image_size: int, stride: int) -> None:
    if x.shape[1] * x.shape[2] != num_tokens:
        got = f"{x.shape[1] * stride}x{x.shape[2] * stride}"
        raise ConvformerError(
            f"RandFormer was built for {image_size}x{image_size} images ({num_tokens} tokens at stride "
            f"{stride}) but got about {got}; resize the input to {image_size}x{image_size} or create the "
            f"model with img_size={x.shape[1] * stride}")


torch.fx.wrap("_check_tokens")


class RandomMixer(nn.Module):
    """Mix tokens with a fixed random matrix: y[b, m, c] = sum_n R[m, n] x[b, n, c]."""

    def __init__(self, dim: int, num_tokens: int, image_size: int = 224, stride: int = 16, **_):
        super().__init__()
        self.num_tokens = num_tokens
        self.image_size = image_size
        self.stride = stride
        self.register_buffer("random_matrix", torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            _check_tokens(x, self.num_tokens, self.image_size, self.stride)
        shape = x.shape
        mixed = torch.matmul(self.random_matrix, x.flatten(1, 2))
        return mixed.reshape(shape)
