"""Live recognition of many streams at once: the engine behind ``asr serve`` and ``asr transcribe -``.

A :class:`LiveRecognizer` holds every open stream: its causal front end, the feature frames waiting for the
encoder, its cache-aware encoder state and its decoder state. Each :meth:`LiveRecognizer.tick` takes every
stream that has a whole chunk waiting (or has ended and still owes frames), stacks their states into one
batch, runs one cache-aware encoder step and one decoding step for all of them, and gives the states back.
Streams join and leave between ticks, so the batch grows and shrinks with the traffic.

The tick is three parts so that a server can keep its event loop free while the model runs: ``collect``
(bookkeeping: which streams, their inputs), ``compute`` (the model alone: no stream is touched, so it can
run in a worker thread) and ``deliver`` (the results back into the streams, and the events for their
clients). ``batched=False`` is the naive design, one model call per stream per chunk, kept to measure
against.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from convformer.asr.ctc import StreamingGreedyDecoder
from convformer.asr.data import FrontendConfig
from convformer.asr.live_frontend import FeatureNorm, StreamingFrontend
from convformer.asr.streaming import StreamingConformer, StreamState
from convformer.asr.task import pick_decoder
from convformer.asr.transducer import GreedyTransducerDecoder
from convformer.errors import ConvformerError


class LiveError(ConvformerError):
    """A refusal that concerns one stream (or one new stream); the others carry on."""


@dataclass
class _Stream:
    sid: object
    frontend: StreamingFrontend
    state: StreamState
    pending: torch.Tensor                 # feature frames not yet given to the encoder (n, n_mels)
    decoder: object                       # decoding state: CTC the last symbol, RNN-T (g, state) of one row
    tokens: list = field(default_factory=list)
    frames_decoded: int = 0               # encoder output frames decoded so far
    ended: bool = False                   # the client sent its end message
    sent_at: list = field(default_factory=list)   # (feature frame count, wall time the audio arrived)


class LiveRecognizer:
    """Many live streams through one model. ``model`` is a CTC, hybrid or transducer Conformer in eval
    mode; ``norm`` the causal front end's normalisation; ``chunk`` feature frames per step (default the
    smallest the model allows)."""

    def __init__(self, model, vocab, norm: FeatureNorm, chunk: int | None = None, decoder: str = "auto",
                 max_streams: int = 64, max_seconds: float = 60.0, max_backlog_seconds: float = 5.0,
                 batched: bool = True):
        if not norm.causal:
            raise ConvformerError("live recognition needs a causal normalisation (fixed or running)")
        self.model, self.vocab, self.norm = model.eval(), vocab, norm
        self.decoder = pick_decoder(model, decoder)
        self.streamer = StreamingConformer(model.encoder)
        self.chunk = chunk or self.streamer.min_chunk()
        if self.chunk % self.streamer.min_chunk():
            raise ConvformerError(f"chunk of {self.chunk} frames: use a multiple of {self.streamer.min_chunk()}")
        self.max_streams, self.max_seconds = max_streams, max_seconds
        self.max_backlog = max_backlog_seconds * 100   # feature frames (10 ms each)
        self.batched = batched
        self.streams: dict[object, _Stream] = {}
        self.frame_seconds = model.cfg.frame_ms / 1000 if hasattr(model, "cfg") else 0.04
        self.rate = FrontendConfig().sample_rate       # what StreamingFrontend takes
        self.blank = model.blank
        self.ticks, self.tick_seconds, self.batch_sizes, self.model_calls = 0, [], [], 0

    # ---- streams -------------------------------------------------------------------------------------
    def open(self, sid) -> None:
        if sid in self.streams:
            raise LiveError(f"stream {sid!r} is already open")
        if len(self.streams) >= self.max_streams:
            raise LiveError(f"the server is full: {self.max_streams} streams are open (--max-streams); "
                            "try again when one ends")
        state = self.streamer.initial_state(1)
        dec = GreedyTransducerDecoder(self.model.prediction, self.model.joint, 1).row(0) \
            if self.decoder == "rnnt" else None
        n_mels = self.model.encoder.cfg.feat_in
        self.streams[sid] = _Stream(sid, StreamingFrontend(self.norm), state, torch.zeros(0, n_mels), dec)

    def feed(self, sid, samples) -> None:
        """Float samples at 16 kHz for an open stream. Refuses audio after the end message, audio beyond
        the utterance limit, and audio the model is too far behind to take (back-pressure)."""
        s = self._get(sid)
        if s.ended:
            raise LiveError("audio after the end message; open a new stream for a new utterance")
        samples = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
        limit = self.max_seconds * self.rate
        if s.frontend.received + samples.numel() > limit:
            raise LiveError(f"the utterance is longer than the {self.max_seconds:g} s limit; the audio after "
                            "it was not recognised: send an end message before it (the result so far follows)")
        if s.pending.shape[0] > self.max_backlog:
            raise LiveError(f"the server is {s.pending.shape[0] / 100:.1f} s behind this stream and cannot keep "
                            "up (too many streams for this machine); the audio after that point was not "
                            "recognised (the result so far follows)")
        frames = s.frontend.push(samples)
        self._queue(s, frames)

    def end(self, sid) -> None:
        """The end message: the rest of the audio is flushed and the final result follows."""
        s = self._get(sid)
        if s.ended:
            raise LiveError("a second end message; open a new stream for a new utterance")
        self._queue(s, s.frontend.finish())
        s.ended = True

    def close(self, sid) -> None:
        """Forget a stream (its client left, or its final result was delivered)."""
        self.streams.pop(sid, None)

    def _get(self, sid) -> _Stream:
        try:
            return self.streams[sid]
        except KeyError:
            raise LiveError(f"no open stream {sid!r}; send a start message first") from None

    def _queue(self, s: _Stream, frames: torch.Tensor) -> None:
        if frames.shape[0]:
            s.pending = torch.cat([s.pending, frames])
            s.sent_at.append((s.frontend.frames_out, time.monotonic()))

    # ---- ticks ---------------------------------------------------------------------------------------
    def ready(self) -> list[_Stream]:
        """Streams with a whole chunk waiting, or ended with frames still owed."""
        out = []
        for s in self.streams.values():
            if s.pending.shape[0] >= self.chunk:
                out.append(s)
            elif s.ended and (s.pending.shape[0] or self.streamer.frames_owed(s.state) > 0
                              or not bool(s.state.ended[0])):
                out.append(s)
        return out

    def collect(self):
        """The next tick's work: (streams, features (B, chunk, F), lengths (B,)), or None when idle."""
        streams = self.ready()
        if not streams:
            return None
        feats, lengths = [], []
        for s in streams:
            piece = s.pending[:self.chunk]
            lengths.append(piece.shape[0])
            if piece.shape[0] < self.chunk:
                piece = torch.cat([piece, piece.new_zeros(self.chunk - piece.shape[0], piece.shape[1])])
            feats.append(piece)
        return streams, torch.stack(feats), torch.tensor(lengths)

    @torch.no_grad()
    def compute(self, work):
        """The model's part of a tick, touching no stream: encoder frames, valid masks, next states and the
        decoding of the new frames, for every stream in ``work``. Counts the tick (``ticks``,
        ``tick_seconds``, ``batch_sizes``, ``model_calls``)."""
        t0 = time.perf_counter()
        streams, feats, lengths = work
        groups = [list(range(len(streams)))] if self.batched else [[i] for i in range(len(streams))]
        results = [None] * len(streams)
        for rows in groups:
            self.model_calls += 1
            state = StreamState.cat([streams[i].state for i in rows])
            enc, valid, nxt = self.streamer.advance(feats[rows], lengths[rows], state)
            gained = self._decode(streams, rows, enc, valid)
            for j, i in enumerate(rows):
                results[i] = (nxt.row(j), int(valid[j].sum()), gained[j])
        self.tick_seconds.append(time.perf_counter() - t0)
        self.batch_sizes.append(len(streams))
        self.ticks += 1
        return results

    def _decode(self, streams, rows, enc, valid):
        """The rows' decoders joined into one batch for this step: [(tokens gained, decoder state after)]."""
        states = [streams[i].decoder for i in rows]
        if self.decoder == "ctc":
            ctc = StreamingGreedyDecoder(len(rows), self.blank)
            ctc.prev = states
            gained = ctc.push(self.model.head(enc), valid)   # greedy: the logits' argmax is the log-probs'
            return list(zip(gained, ctc.prev))
        start = (torch.cat([g for g, _ in states]),
                 tuple(torch.cat(parts, dim=1) for parts in zip(*(state for _, state in states))))
        rnnt = GreedyTransducerDecoder(self.model.prediction, self.model.joint, len(rows), start=start)
        gained = rnnt.feed(enc, valid)
        return [(gained[j], rnnt.row(j)) for j in range(len(rows))]

    def deliver(self, work, results) -> list[dict]:
        """Apply a computed tick to its streams. Returns events: ``{"stream", "type": "partial"|"final",
        "text", "end": seconds of audio the text covers, "latency": seconds from the audio's arrival}``."""
        streams = work[0]
        now, events = time.monotonic(), []
        for s, (state, n_valid, (gained, dec_state)) in zip(streams, results):
            if s.sid not in self.streams:   # closed while the tick ran
                continue
            s.state, s.decoder = state, dec_state
            s.pending = s.pending[self.chunk:]
            s.tokens.extend(gained)
            s.frames_decoded += n_valid
            end = s.frames_decoded * self.frame_seconds
            if gained:
                events.append({"stream": s.sid, "type": "partial", "text": self.vocab.decode(s.tokens),
                               "end": round(end, 3),
                               "latency": round(now - self._arrival(s), 4)})
            if s.ended and not s.pending.shape[0] and self.streamer.frames_owed(s.state) == 0 \
                    and bool(s.state.ended[0]):
                events.append({"stream": s.sid, "type": "final", "text": self.vocab.decode(s.tokens),
                               "end": round(end, 3), "seconds": round(s.frontend.received / self.rate, 3)})
                self.close(s.sid)
        return events

    def _arrival(self, s: _Stream) -> float:
        """When the audio of the newest feature frame the encoder has consumed arrived."""
        consumed = s.frontend.frames_out - s.pending.shape[0]
        when = s.sent_at[0][1] if s.sent_at else time.monotonic()
        while s.sent_at and s.sent_at[0][0] <= consumed:
            when = s.sent_at.pop(0)[1]
        return when

    def tick(self) -> list[dict]:
        """collect + compute + deliver in one call (what a single-threaded caller uses)."""
        work = self.collect()
        return [] if work is None else self.deliver(work, self.compute(work))

    def drain(self) -> list[dict]:
        """Tick until no stream has work (an ended stream gets its final result)."""
        events = []
        while True:
            got = self.tick()
            if not got and self.collect() is None:
                return events
            events += got
