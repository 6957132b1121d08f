"""The fast inference path of CFSR (what ``convformer.optimize`` returns for a CFSR model).

A CFSR body runs 24 half-blocks at the input resolution over 48/96 channels. On a CPU most of its
operations (norms, GELUs, the gate product, residual adds) are elementwise, so a whole-image forward
streams every activation through main memory a dozen times per block and is bound by memory traffic.
This path does the same arithmetic in horizontal stripes of rows, so that each stripe's intermediates
stay in the CPU cache:

* all per-channel affine ops are folded into the neighbouring linear layers (the norms' weights and
  biases into ``a_proj``/``v``/``fc1``, the layer scales into ``proj``/``fc2``), and each branch's last
  linear layer accumulates into the residual with one ``addmm``; the norms' centring is folded too
  (``x @ W'`` with W' = W minus its column means), so a norm only divides each row by its spread;
* a stripe's depthwise convolutions need rows beyond it (4 above and below for the 9x9 kernel, 1 for the
  3x3): the mixer keeps its expanded rows in a ring carried from stripe to stripe, so each row is
  normalised and projected once; the FFN recomputes its one-row halo. Above the first row and below the
  last, zero rows stand in for the convolutions' zero padding;
* the mixer writes a second buffer and the FFN writes back into the first, one stripe behind the mixer,
  so the rows it reads are still in cache.

The result equals the plain model up to float rounding (the tests compare them). The path is for
inference only (it always runs under ``no_grad``); under tracing or ``torch.compile`` a stripe covers the whole
image.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from convformer.sr.cfsr import CFSR, CFSRBlock, check_images
from convformer.layers.folding import fold_input_affine as _fold_input_affine
from convformer.layers.folding import fold_output_scale as _fold_output_scale

#: Target size of one stripe of the 96-channel hidden activations: about 6 MB (51 rows of a 320-pixel
#: wide image) measured fastest on a 2-core machine with 1 MB of L2 per core and 32 MB of L3 (34 rows were
#: 7% slower, 64 rows the same).
STRIPE_BYTES = 6 * 2 ** 20


def stripe_rows(width: int, channels: int = 96, itemsize: int = 4) -> int:
    return max(4, STRIPE_BYTES // (width * channels * itemsize))


def _eager() -> bool:
    """True unless the forward is being traced, compiled or exported. (Gradients do not matter: the path
    always runs under ``no_grad``, so a caller who forgot ``torch.no_grad()`` still gets the stripes.)"""
    return not torch.jit.is_tracing() and not torch.compiler.is_compiling() \
        and not torch.onnx.is_in_onnx_export()


def _scale_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / std(x) row by row, for a (rows, C) matrix: LayerNorm without its centring, which is folded
    into the next linear layer (``_centred``). The variance is E[x^2] - E[x]^2, two reductions and no
    centred copy: three passes over x instead of LayerNorm's five (or ``F.layer_norm``'s slow per-row
    kernel for 48 channels). The formula loses digits only when a row's mean is ~100x its spread; in CFSR
    with the official weights it is under 0.5x."""
    mean = x.mean(-1, keepdim=True)
    mean_sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
    return x * mean_sq.sub_(mean.square_()).clamp_(min=0).add_(eps).rsqrt_()


def _centred(w_in_out: torch.Tensor) -> torch.Tensor:
    """W' with x @ W' == (x - mean(x)) @ W for a (C_in, C_out) matrix: subtract each column's mean."""
    return w_in_out - w_in_out.mean(0, keepdim=True)


def _linear_parts(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return linear.weight.detach().t().contiguous(), linear.bias.detach().clone()


class FastCFSRBlock(nn.Module):
    """One CFSR block with its affine ops folded, evaluated stripe by stripe."""

    def __init__(self, block: CFSRBlock):
        super().__init__()
        block = copy.deepcopy(block)
        mixer, ffn = block.mixer, block.ffn
        if not ffn.merged:
            ffn.merge()
        self.eps1, self.eps2 = block.norm1.eps, block.norm2.eps
        for linear in (mixer.a_proj, mixer.v):
            _fold_input_affine(linear, block.norm1.weight.detach(), block.norm1.bias.detach())
        _fold_output_scale(mixer.proj, block.layer_scale1.detach())
        _fold_input_affine(ffn.fc1, block.norm2.weight.detach(), block.norm2.bias.detach())
        _fold_output_scale(ffn.fc2, block.layer_scale2.detach())
        names = ("a_w", "a_b", "v_w", "v_b", "p_w", "p_b", "f1_w", "f1_b", "f2_w", "f2_b")
        parts = [*_linear_parts(mixer.a_proj), *_linear_parts(mixer.v), *_linear_parts(mixer.proj),
                 *_linear_parts(ffn.fc1), *_linear_parts(ffn.fc2)]
        for name in ("a_w", "v_w", "f1_w"):  # the layers right after a norm also do its centring
            parts[names.index(name)] = _centred(parts[names.index(name)])
        for name, value in zip(names, parts):
            self.register_buffer(name, value)
        self.register_buffer("dw9_w", mixer.a_dw.weight.detach().clone())
        self.register_buffer("dw9_b", mixer.a_dw.bias.detach().clone())
        self.register_buffer("dw3_w", ffn.dw.weight.detach().clone())
        self.register_buffer("dw3_b", ffn.dw.bias.detach().clone())
        self.k9 = mixer.a_dw.kernel_size[0] // 2

    # Both halves run over one image (H, W, C) in stripes of rows. ``work`` holds scratch memory reused by
    # every stripe (fresh allocations would page-fault): a ring of the mixer's expanded rows, a ring of its
    # value rows, and the FFN's expansion buffer.
    def workspace(self, x: torch.Tensor, stripe: int) -> dict:
        w, k = x.shape[2], self.k9
        return {"a": x.new_empty(stripe + 2 * k, w, self.a_w.shape[1]),
                "v": x.new_empty(stripe + k, w, self.v_w.shape[1]),
                "ffn": x.new_empty((stripe + 2) * w * self.f1_w.shape[1])}

    def _mixer_stripe(self, x, out, r0, r1, stripe, work):
        """Rows [r0, r1) of x + proj(DW9(GELU(a_proj(n))) * v(n)), n = norm(x), into ``out``.

        The rings hold GELU(a_proj(n)) for rows [r0 - k, r1 + k) and v(n) for rows [r0, r1 + k). Stripes
        run top to bottom; each computes only rows [r1_prev + k, r1 + k) and keeps the rest from the
        previous stripe (moved to the front of the rings), so no row is normalised or projected twice.
        Rows outside the image are zero, which is the 9x9 convolution's zero padding."""
        h, w, c = x.shape
        k = self.k9
        ring_a, ring_v = work["a"], work["v"]
        if r0 == 0:
            ring_a[:k].zero_()
            lo = 0
        else:  # the previous stripe had ``stripe`` rows; its last 2k / k ring rows are this one's first
            ring_a[:2 * k].copy_(ring_a[stripe:stripe + 2 * k])
            ring_v[:k].copy_(ring_v[stripe:stripe + k])
            lo = min(r0 + k, h)
        hi = min(r1 + k, h)
        if hi > lo:
            normed = _scale_rows(x[lo:hi].reshape(-1, c), self.eps1)
            a_rows = ring_a[lo - r0 + k:hi - r0 + k].view(-1, ring_a.shape[-1])
            torch.ops.aten.gelu_(torch.addmm(self.a_b, normed, self.a_w, out=a_rows))
            torch.addmm(self.v_b, normed, self.v_w, out=ring_v[lo - r0:hi - r0].view(-1, ring_v.shape[-1]))
        rows = r1 - r0 + 2 * k
        if hi < r1 + k:  # below the image
            ring_a[hi - r0 + k:rows].zero_()
        a = F.conv2d(ring_a[:rows][None].permute(0, 3, 1, 2), self.dw9_w, self.dw9_b, padding=(0, k),
                     groups=ring_a.shape[-1])
        a = a[0].permute(1, 2, 0).reshape(-1, ring_a.shape[-1])  # a view when the conv kept channels-last
        gate = a.mul_(ring_v[:r1 - r0].view(-1, ring_v.shape[-1]))
        dst = torch.add(x[r0:r1].reshape(-1, c), self.p_b, out=out[r0:r1].view(-1, c))
        torch.addmm(dst, gate, self.p_w, out=dst)  # accumulating in place: no copy of the residual

    def _ffn_stripe(self, x, out, r0, r1, work):
        """Rows [r0, r1) of x + fc2(h + GELU(DW3(h))), h = GELU(fc1(norm(x))), into ``out``; h is computed
        for rows [r0 - 1, r1 + 1), with zero rows outside the image."""
        h_img, w, c = x.shape
        n = self.f1_w.shape[1]
        lo, hi = max(r0 - 1, 0), min(r1 + 1, h_img)
        top, rows = lo - (r0 - 1), r1 - r0 + 2
        buf = work["ffn"][:rows * w * n].view(rows, w, n)
        end = top + hi - lo
        if top:
            buf[:top].zero_()
        if end < rows:
            buf[end:].zero_()
        normed = _scale_rows(x[lo:hi].reshape(-1, c), self.eps2)
        torch.ops.aten.gelu_(torch.addmm(self.f1_b, normed, self.f1_w, out=buf[top:end].view(-1, n)))
        d = F.conv2d(buf[None].permute(0, 3, 1, 2), self.dw3_w, self.dw3_b, padding=(0, 1), groups=n)
        d = torch.ops.aten.gelu_(d[0].permute(1, 2, 0)).add_(buf[1:-1]).reshape(-1, n)
        dst = torch.add(x[r0:r1].reshape(-1, c), self.f2_b, out=out[r0:r1].view(-1, c))
        torch.addmm(dst, d, self.f2_w, out=dst)

    def forward(self, x: torch.Tensor, tmp: torch.Tensor, stripe: int, work=None) -> torch.Tensor:
        """Apply the block to x (B, H, W, C) in place; ``tmp`` (same shape) receives the mixer's output.

        The halves are pipelined: after the mixer's stripe i, the FFN's stripe i - 1 (which needs one row
        of stripe i) runs while those rows are still in cache, and writes its rows of x. That is safe
        because later mixer stripes read x only from their own first row on (the rings keep the rows above
        them). Stripes have at least 2k rows, so the ring moves never overlap."""
        stripe = max(stripe, 2 * self.k9)
        work = work if work is not None else self.workspace(x, stripe)
        rows = x.shape[1]
        for i in range(x.shape[0]):
            prev = None
            for r0 in range(0, rows, stripe):
                r1 = min(r0 + stripe, rows)
                self._mixer_stripe(x[i], tmp[i], r0, r1, stripe, work)
                if prev is not None:
                    self._ffn_stripe(tmp[i], x[i], *prev, work)
                prev = (r0, r1)
            self._ffn_stripe(tmp[i], x[i], *prev, work)
        return x


class FastCFSR(nn.Module):
    """Inference-only CFSR with folded weights and striped evaluation; built by ``optimize``."""

    num_classes = 0

    def __init__(self, model: CFSR, stripe_rows: int | None = None):
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.cfg, self.scale = model.cfg, model.scale
        self.stripe_rows = stripe_rows
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        self.conv_first = model.conv_first
        self.groups = nn.ModuleList()
        for group in model.groups:
            self.groups.append(nn.ModuleList([FastCFSRBlock(b) for b in group.blocks]))
        self.group_proj = nn.ModuleList([g.proj for g in model.groups])
        self.norm = model.norm
        self.conv_after_body = model.conv_after_body
        self.upsample = model.upsample
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        if not _eager():
            stripe = x.shape[-2]
        else:
            stripe = self.stripe_rows or stripe_rows(x.shape[-1], 2 * self.cfg.dim, x.element_size())
        with torch.no_grad():
            x = ((x - self.mean) * self.cfg.img_range).contiguous(memory_format=torch.channels_last)
            first = self.conv_first(x)  # channels-last: the copy below is a straight memcpy
            h = first.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)  # the blocks work in place
            tmp, c = torch.empty_like(h), h.shape[-1]
            stripe = max(stripe, 2 * self.groups[0][0].k9)
            work = self.groups[0][0].workspace(h, stripe)
            for blocks, proj in zip(self.groups, self.group_proj):
                for block in blocks:
                    block(h, tmp, stripe, work)
                flat = h.view(-1, c)
                torch.addmm(flat, flat, proj.weight.t(), out=tmp.view(-1, c)).add_(proj.bias)
                h, tmp = tmp, h
            h = self.norm(h).permute(0, 3, 1, 2)
            out = self.upsample(self.conv_after_body(h).add_(first)).contiguous()
            return out.div_(self.cfg.img_range).add_(self.mean)
