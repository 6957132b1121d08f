"""Multi-head self-attention token mixer of CAFormer (Yu et al., MetaFormer Baselines).

Plain softmax attention over all H*W tokens of a stage, no position embedding (the convolutional stages
before it supply position), qkv and output projection without bias, computed by
``F.scaled_dot_product_attention`` so PyTorch picks the fused kernel for the hardware.
"""
import torch
from torch import nn
import torch.nn.functional as F


class AttentionMixer(nn.Module):
    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 **_):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = max(dim // head_dim, 1)
        inner = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, h, w, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(y))
