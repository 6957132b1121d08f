"""ONNX export of the streaming Conformer's step: the caches are inputs and outputs of the graph.

One call of the exported graph is one :meth:`StreamingConformer.step` plus the CTC head: inputs
``features`` (B, chunk, n_mels), ``lengths`` (B,) and the state tensors (``feat_cache``, ``feat_pos``,
``feat_len``, ``keys``, ``conv``); outputs ``encoded``, ``log_probs``, ``valid`` and the next state under
the same names with a ``next_`` prefix. The chunk size is fixed at export; the batch is free. The file is
written only after onnxruntime, fed its own state back step by step over a whole utterance, gives the same
frames as PyTorch.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convformer.errors import ConvformerError
from convformer.asr.streaming import StreamingConformer, StreamState
from convformer.fileio import atomic_write
from convformer.export.onnx import onnx_session

STATE = ("feat_cache", "feat_pos", "feat_len", "keys", "conv")


class _StepGraph(nn.Module):
    def __init__(self, model, stream: StreamingConformer):
        super().__init__()
        self.model, self.stream = model, stream

    def forward(self, features, lengths, feat_cache, feat_pos, feat_len, keys, conv):
        state = StreamState(feat_cache, feat_pos, feat_len, torch.zeros_like(feat_pos, dtype=torch.bool), keys, conv,
                            self.stream.signature)
        encoded, valid, nxt = self.stream.advance(features, lengths, state)
        log_probs = torch.log_softmax(self.model.head(encoded), dim=-1)
        return encoded, log_probs, valid, nxt.features, nxt.feat_pos, nxt.feat_len, nxt.keys, nxt.conv


def _as_inputs(state: StreamState) -> list[torch.Tensor]:
    return [state.features, state.feat_pos, state.feat_len, state.keys, state.conv]


def export_stream_step(model, path: str | os.PathLike, chunk: int | None = None, opset: int = 17,
                       atol: float = 1e-4) -> dict:
    """Export ``model`` (a ConformerCTC) streaming ``chunk`` feature frames per step (default: the smallest).
    Returns {"path", "chunk", "max_abs_diff"}; raises ConvformerError if onnxruntime disagrees."""
    model = model.eval()
    stream = StreamingConformer(model.encoder)
    chunk = chunk or stream.min_chunk()
    if chunk % stream.min_chunk():
        raise ConvformerError(f"chunk of {chunk} feature frames: use a multiple of {stream.min_chunk()}")
    graph = _StepGraph(model, stream).eval()
    state = stream.initial_state(1)
    example = (torch.zeros(1, chunk, model.cfg.feat_in), torch.tensor([chunk]), *_as_inputs(state))
    names = ["features", "lengths", *STATE]
    outputs = ["encoded", "log_probs", "valid", *(f"next_{n}" for n in STATE)]
    axes = {n: {0: "batch"} for n in names + outputs}
    for n in ("keys", "conv", "next_keys", "next_conv"):
        axes[n] = {1: "batch"}
    path = Path(path)
    result = {"path": str(path), "chunk": chunk, "chunk_ms": chunk * 10, "opset": opset}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes: the chunk size is a constant of the graph
            torch.onnx.export(graph, example, tmp, input_names=names, output_names=outputs, dynamic_axes=axes,
                              opset_version=opset, dynamo=False)
        diff = _compare(stream, model, tmp, chunk)
        result["max_abs_diff"] = diff
        if not diff <= atol:
            raise ConvformerError(f"ONNX export of the streaming step differs from PyTorch by {diff:.3g} "
                                  f"(tolerance {atol:g}); {path.name} was not written")

    atomic_write(path, write)
    return result


@torch.no_grad()
def _compare(stream: StreamingConformer, model, onnx_path: str, chunk: int) -> float:
    """Stream two utterances of different lengths through both, feeding each its own state back."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3 * chunk, model.cfg.feat_in, generator=g)
    lengths = torch.tensor([3 * chunk, 2 * chunk - 5])
    session = onnx_session(onnx_path)
    onnx_state = [t.numpy() for t in _as_inputs(stream.initial_state(2))]
    worst = 0.0
    for piece, n, enc, valid, _ in stream.steps(feats, lengths, chunk):
        out = session.run(None, dict(zip(["features", "lengths", *STATE], [piece.numpy(), n.numpy(), *onnx_state])))
        if not np.array_equal(out[2], valid.numpy()):
            return float("inf")
        mask = valid.numpy()
        worst = max(worst, float(np.abs(out[0][mask] - enc.numpy()[mask]).max()) if mask.any() else 0.0)
        onnx_state = out[3:]
    return worst
