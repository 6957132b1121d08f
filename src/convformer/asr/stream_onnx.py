"""ONNX export of the streaming Conformer's step: the caches are inputs and outputs of the graph.

One call of the exported graph is one :meth:`StreamingConformer.step` plus the CTC head: inputs
``features`` (B, chunk, n_mels), ``lengths`` (B,) and the state tensors (``feat_cache``, ``feat_pos``,
``feat_len``, ``keys``, ``conv``); outputs ``encoded``, ``log_probs``, ``valid`` and the next state under
the same names with a ``next_`` prefix. The chunk size is fixed at export; the batch is free. The file is
written only after onnxruntime, fed its own state back step by step over a whole utterance, gives the same
frames as PyTorch.

A hybrid or transducer model exported with ``decoder="rnnt"`` also carries the RNN-T greedy decoder in the
graph: its state (``pred_g``, the prediction network's last output, and ``pred_h``/``pred_c``, its LSTM
state) goes in and out with the encoder's, and the output ``tokens`` (B, chunk frames x max_symbols) holds
the tokens emitted in order, -1 in the unused slots (:func:`~convformer.asr.transducer.greedy_chunk_static`:
the loop is unrolled, so every step pays for max_symbols tries per frame). Start ``pred_*`` from
:func:`initial_decoder_state`. The check then also requires the same tokens as PyTorch's greedy decoder.
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
from convformer.asr.transducer import GreedyTransducerDecoder, greedy_chunk_static
from convformer.fileio import atomic_write
from convformer.export.onnx import onnx_session

STATE = ("feat_cache", "feat_pos", "feat_len", "keys", "conv")
DECODER_STATE = ("pred_g", "pred_h", "pred_c")


class _StepGraph(nn.Module):
    def __init__(self, model, stream: StreamingConformer, rnnt: bool = False, max_symbols: int = 10):
        super().__init__()
        self.model, self.stream, self.rnnt, self.max_symbols = model, stream, rnnt, max_symbols

    def forward(self, features, lengths, feat_cache, feat_pos, feat_len, keys, conv, *decoder_state):
        state = StreamState(feat_cache, feat_pos, feat_len, torch.zeros_like(feat_pos, dtype=torch.bool), keys, conv,
                            self.stream.signature)
        encoded, valid, nxt = self.stream.advance(features, lengths, state)
        out = (nxt.features, nxt.feat_pos, nxt.feat_len, nxt.keys, nxt.conv)
        if not self.rnnt:
            return encoded, torch.log_softmax(self.model.head(encoded), dim=-1), valid, *out
        tokens, g, h, c = greedy_chunk_static(self.model.prediction, self.model.joint, encoded, valid, *decoder_state,
                                              max_symbols=self.max_symbols)
        return encoded, tokens, valid, *out, g, h, c


@torch.no_grad()
def initial_decoder_state(model, batch: int = 1) -> list[torch.Tensor]:
    """``pred_g``, ``pred_h``, ``pred_c`` of a stream's start (the prediction network fed the blank)."""
    g, (h, c) = model.prediction.step(torch.full((batch,), model.prediction.blank, dtype=torch.long))
    return [g, h, c]


def _as_inputs(state: StreamState) -> list[torch.Tensor]:
    return [state.features, state.feat_pos, state.feat_len, state.keys, state.conv]


def export_stream_step(model, path: str | os.PathLike, chunk: int | None = None, opset: int = 17,
                       atol: float = 1e-4, decoder: str = "ctc", max_symbols: int = 10) -> dict:
    """Export ``model`` (a ConformerCTC, hybrid or transducer) streaming ``chunk`` feature frames per step
    (default: the smallest), with the CTC head's log-probabilities or (``decoder="rnnt"``) the RNN-T greedy
    decoder in the graph. Returns {"path", "chunk", "max_abs_diff", ...}; raises ConvformerError if
    onnxruntime disagrees."""
    from convformer.asr.task import pick_decoder
    model = model.eval()
    rnnt = pick_decoder(model, decoder) == "rnnt"
    stream = StreamingConformer(model.encoder)
    chunk = chunk or stream.min_chunk()
    if chunk % stream.min_chunk():
        raise ConvformerError(f"chunk of {chunk} feature frames: use a multiple of {stream.min_chunk()}")
    graph = _StepGraph(model, stream, rnnt, max_symbols).eval()
    state = stream.initial_state(1)
    extra = initial_decoder_state(model, 1) if rnnt else []
    example = (torch.zeros(1, chunk, model.cfg.feat_in), torch.tensor([chunk]), *_as_inputs(state), *extra)
    names = ["features", "lengths", *STATE, *(DECODER_STATE if rnnt else ())]
    outputs = ["encoded", "tokens" if rnnt else "log_probs", "valid", *(f"next_{n}" for n in STATE),
               *(f"next_{n}" for n in (DECODER_STATE if rnnt else ()))]
    axes = {n: {0: "batch"} for n in names + outputs}
    for n in ("keys", "conv", "next_keys", "next_conv", "pred_h", "pred_c", "next_pred_h", "next_pred_c"):
        axes[n] = {1: "batch"}
    path = Path(path)
    result = {"path": str(path), "chunk": chunk, "chunk_ms": chunk * 10, "opset": opset,
              "decoder": "rnnt" if rnnt else "ctc", **({"max_symbols": max_symbols} if rnnt else {})}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes: the chunk size is a constant of the graph
            torch.onnx.export(graph, example, tmp, input_names=names, output_names=outputs, dynamic_axes=axes,
                              opset_version=opset, dynamo=False)
        diff, tokens = _compare(stream, model, tmp, chunk, rnnt, max_symbols)
        result["max_abs_diff"] = diff
        if rnnt:
            result["tokens_checked"] = tokens
        if not diff <= atol:
            raise ConvformerError(f"ONNX export of the streaming step differs from PyTorch by {diff:.3g} "
                                  f"(tolerance {atol:g}); {path.name} was not written")

    atomic_write(path, write)
    return result


@torch.no_grad()
def _compare(stream: StreamingConformer, model, onnx_path: str, chunk: int, rnnt: bool = False,
             max_symbols: int = 10) -> tuple[float, int]:
    """Stream two utterances of different lengths through both, feeding each its own state back; with the
    RNN-T decoder the tokens must also equal PyTorch's greedy decoder's (else the difference is inf).
    Returns the largest frame difference and the number of tokens compared."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3 * chunk, model.cfg.feat_in, generator=g)
    lengths = torch.tensor([3 * chunk, 2 * chunk - 5])
    session = onnx_session(onnx_path)
    onnx_state = [t.numpy() for t in _as_inputs(stream.initial_state(2))]
    onnx_state += [t.numpy() for t in initial_decoder_state(model, 2)] if rnnt else []
    greedy = GreedyTransducerDecoder(model.prediction, model.joint, 2, max_symbols) if rnnt else None
    onnx_tokens: list[list[int]] = [[], []]
    names = ["features", "lengths", *STATE, *(DECODER_STATE if rnnt else ())]
    worst = 0.0
    for piece, n, enc, valid, _ in stream.steps(feats, lengths, chunk):
        out = session.run(None, dict(zip(names, [piece.numpy(), n.numpy(), *onnx_state])))
        if not np.array_equal(out[2], valid.numpy()):
            return float("inf"), 0
        mask = valid.numpy()
        worst = max(worst, float(np.abs(out[0][mask] - enc.numpy()[mask]).max()) if mask.any() else 0.0)
        onnx_state = out[3:]
        if rnnt:
            greedy.feed(enc, valid)
            for row, tokens in zip(onnx_tokens, out[1]):
                row += [int(t) for t in tokens if t >= 0]
    count = sum(map(len, onnx_tokens))
    if rnnt and onnx_tokens != greedy.tokens:
        return float("inf"), count
    return worst, count
