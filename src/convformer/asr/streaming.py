"""Cache-aware streaming for the Conformer: feed feature chunks, get the offline encoder's frames.

Noroozi et al. keep, per layer, the activations later frames still need (the attention keys/values of
the last ``left`` frames, the last kernel-1 inputs of the causal depthwise conv) so each chunk is
computed once. We keep the same caches and add two things, so that streaming equals the offline masked
forward (within float rounding) for both context styles:

* **Subsampling**: the state holds the last 2 x factor feature frames. Each step re-runs the causal
  subsampling convolutions over cache + chunk and keeps the outputs the cache made exact; frames before
  the stream start and after its end are zeroed between the convolutions exactly as offline.
* **Right context in ``regular`` style**: a layer whose queries may look r frames ahead answers each
  query r frames late (it waits for its keys), so the output lags r frames per layer; ``chunked_limited``
  needs no lag as long as a step holds whole chunks. No frame is ever recomputed.

Every stream in a batch advances by the same chunk each step but has its own position and length, so
streams that started at different times share a batch; a stream with fewer valid frames than the chunk
has ended, and later steps (with no new features) flush the frames still owed. ``step`` returns every
frame it computed together with a mask of which are real output frames, in order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from convformer.errors import ConvformerError
from convformer.mixers.rel_attention import relative_layout
from convformer.asr.conformer import UTTERANCE_NORMS, ConformerEncoder, context_allowed, lookahead_frames


@dataclass
class StreamState:
    """Everything a stream needs between steps. Tensors are batch-first except the per-layer caches."""
    features: torch.Tensor      # (B, 2*factor, feat_in) last feature frames
    feat_pos: torch.Tensor      # (B,) absolute index of the next feature frame
    feat_len: torch.Tensor      # (B,) valid feature frames received so far
    ended: torch.Tensor         # (B,) bool: a short chunk has ended this stream
    keys: torch.Tensor          # (layers, B, cache, d_model) residual stream entering attention
    conv: torch.Tensor          # (layers, B, d_model, kernel-1) depthwise-conv inputs
    signature: str              # which model and context made this state

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    @staticmethod
    def cat(states: list["StreamState"]) -> "StreamState":
        """One batch from several streams' states (each of any batch size), in order; a live server builds
        each tick's batch from the streams that have a chunk ready."""
        if not states or len({s.signature for s in states}) != 1:
            raise ConvformerError("states to batch together must come from the same model and context")
        return StreamState(
            features=torch.cat([s.features for s in states]), feat_pos=torch.cat([s.feat_pos for s in states]),
            feat_len=torch.cat([s.feat_len for s in states]), ended=torch.cat([s.ended for s in states]),
            keys=torch.cat([s.keys for s in states], dim=1), conv=torch.cat([s.conv for s in states], dim=1),
            signature=states[0].signature)

    def row(self, i: int) -> "StreamState":
        """Stream ``i`` alone, as a batch of one (views of this state's tensors)."""
        return StreamState(features=self.features[i:i + 1], feat_pos=self.feat_pos[i:i + 1],
                           feat_len=self.feat_len[i:i + 1], ended=self.ended[i:i + 1],
                           keys=self.keys[:, i:i + 1], conv=self.conv[:, i:i + 1], signature=self.signature)

    def reset(self, rows) -> None:
        """Start new streams in the given batch rows (the other rows carry on)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        for t in (self.features, self.feat_pos, self.feat_len, self.ended):
            t[rows] = 0
        self.keys[:, rows] = 0
        self.conv[:, rows] = 0


class StreamingConformer(nn.Module):
    """Chunk-by-chunk view of a :class:`ConformerEncoder` (shares its weights; eval mode only)."""

    def __init__(self, encoder: ConformerEncoder, context: tuple | None = None):
        super().__init__()
        self.encoder = encoder
        cfg = encoder.cfg
        self.context = tuple(context) if context is not None else encoder.att_context
        left, right = self.context
        self.factor = cfg.subsampling_factor
        if not (cfg.causal_subsampling and cfg.causal_conv):
            raise ConvformerError("streaming needs causal subsampling and a causal depthwise conv "
                                  "(causal_subsampling=True, causal_conv=True)")
        if left < 0:
            raise ConvformerError(f"streaming needs a finite left context; this model's is {self.context}")
        if cfg.conv_norm.startswith(UTTERANCE_NORMS):
            raise ConvformerError(f"conv_norm {cfg.conv_norm!r} normalises over the whole utterance, so the model "
                                  "cannot stream; use batch_norm or layer_norm to stream")
        if cfg.att_context_style == "chunked_limited" and right >= 0:
            self.chunk = right + 1
            self.lag = 0
            self.cache_frames = (left // self.chunk) * self.chunk
        else:
            if right < 0:
                raise ConvformerError(f"streaming needs a finite right context; this model's is {self.context}")
            self.chunk, self.lag = 1, right
            self.cache_frames = left + right
        self.delay = self.lag * cfg.n_layers   # output positions trail input positions by this many frames
        self.signature = hashlib.sha1(repr((cfg, self.context)).encode()).hexdigest()[:16]

    @property
    def latency_frames(self) -> int:
        """Encoder frames of look-ahead: a frame's output needs this many later frames to have arrived."""
        return lookahead_frames(self.encoder.cfg, self.context)

    def min_chunk(self) -> int:
        """Smallest valid chunk, in feature frames; every chunk is a multiple of it."""
        return self.factor * self.chunk

    def initial_state(self, batch_size: int = 1, device=None, dtype=torch.float32) -> StreamState:
        cfg = self.encoder.cfg
        zeros = dict(device=device, dtype=dtype)
        long = dict(device=device, dtype=torch.long)
        return StreamState(
            features=torch.zeros(batch_size, 2 * self.factor, cfg.feat_in, **zeros),
            feat_pos=torch.zeros(batch_size, **long), feat_len=torch.zeros(batch_size, **long),
            ended=torch.zeros(batch_size, dtype=torch.bool, device=device),
            keys=torch.zeros(cfg.n_layers, batch_size, self.cache_frames, cfg.d_model, **zeros),
            conv=torch.zeros(cfg.n_layers, batch_size, cfg.d_model, cfg.conv_kernel - 1, **zeros),
            signature=self.signature)

    def _check(self, features: torch.Tensor, lengths: torch.Tensor, state: StreamState) -> None:
        if state.signature != self.signature:
            raise ConvformerError("this stream state was made by another model or attention context; "
                                  "start the stream again with initial_state()")
        if features.dim() != 3 or features.shape[2] != self.encoder.cfg.feat_in:
            raise ConvformerError(f"expected a chunk (batch, frames, {self.encoder.cfg.feat_in}), "
                                  f"got {tuple(features.shape)}")
        if features.shape[0] != state.batch_size:
            raise ConvformerError(f"chunk has {features.shape[0]} streams but the state {state.batch_size}")
        n = features.shape[1]
        if n == 0 or n % self.min_chunk():
            raise ConvformerError(f"chunk of {n} feature frames: use a multiple of {self.min_chunk()} "
                                  f"(subsampling {self.factor} x attention chunk {self.chunk})")
        if bool(((lengths < 0) | (lengths > n)).any()):
            raise ConvformerError(f"chunk lengths must lie in [0, {n}], got {lengths.tolist()}")
        if bool((state.ended & (lengths > 0)).any()):
            raise ConvformerError("a stream that ended (a chunk shorter than the others) got more frames; "
                                  "reset its row with state.reset(rows) to start a new stream there")

    @torch.no_grad()
    def step(self, features: torch.Tensor, state: StreamState, lengths: torch.Tensor | None = None):
        """One chunk: features (B, n, feat_in), n a multiple of :meth:`min_chunk`; ``lengths`` (B,) valid
        frames per stream (fewer than n ends that stream). Returns (frames (B, n/factor, d_model),
        valid (B, n/factor) bool, next state). The state passed in is not modified."""
        b, n, _ = features.shape
        lengths = torch.full((b,), n, dtype=torch.long, device=features.device) if lengths is None \
            else lengths.to(device=features.device, dtype=torch.long)
        self._check(features, lengths, state)
        return self.advance(features, lengths, state)

    def advance(self, features: torch.Tensor, lengths: torch.Tensor, state: StreamState):
        """:meth:`step` without its input checks (and traceable: the ONNX export runs this)."""
        enc, cfg = self.encoder, self.encoder.cfg
        n = features.shape[1]
        c = n // self.factor
        feat_len = state.feat_len + lengths
        buffer = torch.cat([state.features, features.to(state.features.dtype)], dim=1)
        start = state.feat_pos - 2 * self.factor
        x, frame_len = enc.subsampling(buffer, feat_len, start=start)
        x = x[:, 2:2 + c] * enc.xscale
        first = torch.div(state.feat_pos, self.factor, rounding_mode="floor")   # position of x[:, 0]
        k, lag = self.cache_frames, self.lag
        window = torch.arange(k + c, device=x.device)
        queries = slice(k - lag, k - lag + c)   # the frames of the key window that ask this step
        allowed = context_allowed(window[queries], window, self.context, cfg.att_context_style)
        table, index = relative_layout(k - lag, c, 0, k + c, cfg.d_model, x.device)
        keys_next, conv_next = [], []
        for i, layer in enumerate(enc.layers):
            # this layer's new input frames sit at absolute positions first .. first + c - 1
            keys = torch.cat([state.keys[i], layer.half_ffn1(x)], dim=1)
            key_pos = first.unsqueeze(1) - k + window
            key_ok = (key_pos >= 0) & (key_pos < frame_len.unsqueeze(1))
            query_ok = key_ok[:, queries]
            blocked = ~(allowed.unsqueeze(0) & query_ok.unsqueeze(2) & key_ok.unsqueeze(1))
            h = layer.attend(keys, queries, table, index, blocked)
            h, conv_cache = layer.convolve(h, ~query_ok, state.conv[i])
            x = layer.finish(h)
            keys_next.append(keys[:, keys.shape[1] - k:])
            conv_next.append(conv_cache)
            first = first - lag
        out_pos = first.unsqueeze(1) + torch.arange(c, device=x.device)
        valid = (out_pos >= 0) & (out_pos < frame_len.unsqueeze(1))
        nxt = StreamState(features=buffer[:, buffer.shape[1] - 2 * self.factor:], feat_pos=state.feat_pos + n,
                          feat_len=feat_len, ended=state.ended | (lengths < n),
                          keys=torch.stack(keys_next) if keys_next else state.keys,
                          conv=torch.stack(conv_next) if conv_next else state.conv, signature=self.signature)
        return enc.project(x), valid, nxt

    def frames_owed(self, state: StreamState) -> int:
        """Output frames some stream still has to receive (steps with empty chunks deliver them)."""
        total = self.encoder.subsampling.output_length(state.feat_len)
        delivered = torch.div(state.feat_pos, self.factor, rounding_mode="floor") - self.delay
        return int((total - delivered).clamp(min=0).max()) if state.batch_size else 0

    @torch.no_grad()
    def steps(self, features: torch.Tensor, lengths: torch.Tensor | None, chunk: int):
        """Stream whole utterances (B, T, feat_in) in chunks of ``chunk`` feature frames, then flush. Yields
        (chunk, chunk lengths, frames, valid, state) for every step."""
        b, t, f = features.shape
        lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else lengths.long()
        state = self.initial_state(b, features.device, features.dtype)
        pos = 0
        while pos < t or self.frames_owed(state) > 0:
            piece = features[:, pos:pos + chunk]
            if piece.shape[1] < chunk:
                piece = torch.cat([piece, piece.new_zeros(b, chunk - piece.shape[1], f)], dim=1)
            n = (lengths - pos).clamp(0, chunk)
            y, valid, state = self.step(piece, state, n)
            yield piece, n, y, valid, state
            pos += chunk

    @torch.no_grad()
    def run(self, features: torch.Tensor, lengths: torch.Tensor | None, chunk: int):
        """Stream whole utterances (B, T, feat_in) in chunks of ``chunk`` feature frames, flushing at the
        end. Returns (B, T', d_model) and lengths equal to the offline forward's."""
        b = features.shape[0]
        outs, masks = [], []
        for _, _, y, valid, _ in self.steps(features, lengths, chunk):
            outs.append(y)
            masks.append(valid)
        y, valid = torch.cat(outs, dim=1), torch.cat(masks, dim=1)
        out_len = valid.sum(1)
        width = int(out_len.max()) if b else 0
        out = y.new_zeros(b, width, y.shape[2])
        for i in range(b):
            out[i, :out_len[i]] = y[i][valid[i]]
        return out, out_len



class BufferedStreaming:
    """Buffered streaming of any encoder, cache-aware or not (NeMo's buffered inference, the baseline the
    cache-aware paper compares against): every step runs the whole encoder over a window of up to ``left``
    past feature frames, the ``chunk`` new ones and ``right`` future ones (the look-ahead), and keeps the
    encoder frames of the chunk. Nothing is cached, so each step recomputes its left context: compute per
    second of audio grows with (left + chunk + right) / chunk, and frames near a window's edges differ from
    the offline forward's. One utterance at a time (windows of different utterances would not align)."""

    def __init__(self, encoder: ConformerEncoder, chunk: int, left: int, right: int = 0):
        factor = encoder.cfg.subsampling_factor
        if chunk <= 0 or chunk % factor or left % factor or right % factor or left < 0 or right < 0:
            raise ConvformerError(f"buffered streaming needs a positive chunk and non-negative contexts in multiples "
                                  f"of the subsampling factor {factor} feature frames; got {chunk}, {left}, {right}")
        self.encoder, self.chunk, self.left, self.right, self.factor = encoder, chunk, left, right, factor

    @torch.no_grad()
    def steps(self, features: torch.Tensor):
        """Stream one utterance's features (T, feat_in). Yields each step's encoder frames (1, n, out_dim)."""
        total = features.shape[0]
        frames = int(self.encoder.subsampling.output_length(torch.tensor([total])))
        for start in range(0, total, self.chunk):
            first = max(0, start - self.left)
            window = features[first:min(total, start + self.chunk + self.right)]
            enc, _ = self.encoder(window[None])
            offset = (start - first) // self.factor
            keep = min(self.chunk // self.factor, frames - start // self.factor)
            yield enc[:, offset:offset + keep]

    def run(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder frames of a whole utterance (1, T', out_dim), streamed."""
        return torch.cat(list(self.steps(features)), dim=1)
