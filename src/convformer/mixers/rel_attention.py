"""Multi-head self-attention with Transformer-XL relative positions, the mixer of the Conformer.

Dai et al., "Transformer-XL" (section 3.3), as used by Gulati et al.'s Conformer and NVIDIA NeMo's
cache-aware streaming Conformer (Noroozi et al.). The score of query i and key j is

    (q_i + u) . k_j  +  (q_i + v) . W_pos p(i - j)

where p(d) is the sinusoid of the signed distance d = pos(query) - pos(key) and u, v are learned per
head. Queries and keys carry explicit positions, so one function serves the offline forward (queries =
keys = the whole utterance) and a streaming step (queries = the new chunk, keys = cache + chunk). The
distance term is looked up with ``gather`` rather than the usual pad-and-reshape shift, which only works
when the queries are the last keys; the numbers are the same dot products.

Sequences are (B, T, C). Blocked query/key pairs get a score of -1e4 (not -inf, so a query with every
key blocked, a padding frame, gives a uniform softmax that is then zeroed instead of NaN).
"""
from __future__ import annotations

import math

import torch
from torch import nn

BLOCKED_SCORE = -10000.0


def relative_sinusoids(max_distance: int, min_distance: int, dim: int, device=None) -> torch.Tensor:
    """Sinusoid embeddings for the distances max_distance, max_distance-1, ..., min_distance: (R, dim).

    Even channels are sin(d * w_k), odd channels cos(d * w_k), w_k = 10000^(-2k/dim), computed in fp32."""
    d = torch.arange(max_distance, min_distance - 1, -1, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    table = torch.zeros(d.shape[0], dim, device=device)
    table[:, 0::2] = torch.sin(d * freq)
    table[:, 1::2] = torch.cos(d * freq)
    return table


def relative_layout(query_start: int, num_queries: int, key_start: int, num_keys: int, dim: int,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance embeddings and, for every (query, key) pair, the row of its distance.

    Queries sit at positions query_start + i, keys at key_start + j (positions relative to each other are
    all that matters). Returns ``(table (R, dim), index (num_queries, num_keys))``."""
    hi = (query_start + num_queries - 1) - key_start
    lo = query_start - (key_start + num_keys - 1)
    q = torch.arange(num_queries, device=device).unsqueeze(1) + query_start
    k = torch.arange(num_keys, device=device).unsqueeze(0) + key_start
    return relative_sinusoids(hi, lo, dim, device), hi - (q - k)


class RelPositionAttention(nn.Module):
    """(B, Tq, C) queries attend to (B, Tk, C) keys/values with relative-position scores."""

    def __init__(self, dim: int, num_heads: int = 4, attn_drop: float = 0.0, bias: bool = True, **_):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.pos = nn.Linear(dim, dim, bias=False)
        self.bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor, pos_table: torch.Tensor, pos_index: torch.Tensor,
                blocked: torch.Tensor | None = None) -> torch.Tensor:
        """x: queries (B, Tq, C); context: keys and values (B, Tk, C); pos_table (R, C) and pos_index
        (Tq, Tk) from :func:`relative_layout`; blocked: (B, Tq, Tk) bool, True where a query may not look."""
        b, tq, c = x.shape
        tk = context.shape[1]
        h, hd = self.num_heads, self.head_dim
        q = self.q(x).view(b, tq, h, hd)
        k = self.k(context).view(b, tk, h, hd).transpose(1, 2)
        v = self.v(context).view(b, tk, h, hd).transpose(1, 2)
        p = self.pos(pos_table).view(-1, h, hd).permute(1, 2, 0)                 # (h, hd, R)
        content = (q + self.bias_u).transpose(1, 2) @ k.transpose(-2, -1)       # (B, h, Tq, Tk)
        position = (q + self.bias_v).transpose(1, 2) @ p                        # (B, h, Tq, R)
        position = position.gather(-1, pos_index.expand(b, h, tq, tk))
        scores = (content + position) / math.sqrt(hd)
        if blocked is not None:
            blocked = blocked.unsqueeze(1)
            scores = scores.masked_fill(blocked, BLOCKED_SCORE)
            weights = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        else:
            weights = torch.softmax(scores, dim=-1)
        y = self.attn_drop(weights) @ v                                         # (B, h, Tq, hd)
        return self.out(y.transpose(1, 2).reshape(b, tq, c))
