"""RNN-Transducer parts (Graves, "Sequence Transduction with Recurrent Neural Networks", 2012), in the shapes
of NVIDIA NeMo's ``RNNTDecoder`` and ``RNNTJoint``: a prediction network (embedding + LSTM over the tokens
emitted so far), a joint network (encoder and prediction projections, an activation, the output layer), the
transducer loss, and greedy decoding offline and across streaming chunks.

Conventions (NeMo's): the vocabulary has ``V`` tokens and the blank is the last index ``V``; the prediction
network starts from the blank (its embedding row is zero, the padding index) and sees ``U`` targets, so its
output has ``U + 1`` steps; the joint network's output has ``V + 1`` classes.

The loss is the negative log-probability of all alignments, computed by the forward recursion over the
T x (U + 1) lattice in log space. The recursion runs along the lattice's anti-diagonals: every cell of a
diagonal depends only on the previous one, so one step handles a whole diagonal of every utterance in the
batch (T + U steps, no approximation; gradients by autograd through the recursion, which is the backward
recursion).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convformer.errors import ConvformerError


class PredictionNetwork(nn.Module):
    """Embedding + LSTM over the emitted tokens (NeMo ``RNNTDecoder`` with ``blank_as_pad=True``). The start
    step, and any blank fed in, enters the LSTM as a zero vector (NeMo's start-of-sequence), whatever the
    embedding's blank row holds."""

    def __init__(self, vocab_size: int, hidden: int = 320, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.blank = vocab_size, vocab_size
        self.embedding = nn.Embedding(vocab_size + 1, hidden, padding_idx=vocab_size)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens) * (tokens != self.blank).unsqueeze(-1).to(self.embedding.weight.dtype)

    def forward(self, targets: torch.Tensor, state=None):
        """(B, U) token ids -> ((B, U + 1, H) outputs with the start (blank) step first, LSTM state)."""
        y = F.pad(targets, (1, 0), value=self.blank)
        return self.lstm(self.embed(y), state)

    def step(self, tokens: torch.Tensor, state=None):
        """One step for (B,) tokens (the blank to start) -> ((B, H) output, new state)."""
        out, state = self.lstm(self.embed(tokens)[:, None], state)
        return out[:, 0], state


class JointNetwork(nn.Module):
    """``out(act(enc(f) + pred(g)))`` for every (frame, token step) pair (NeMo ``RNNTJoint``)."""

    def __init__(self, encoder_dim: int, pred_dim: int, hidden: int, vocab_size: int, activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        if activation not in acts:
            raise ConvformerError(f"joint activation must be one of {sorted(acts)}, got {activation!r}")
        self.enc = nn.Linear(encoder_dim, hidden)
        self.pred = nn.Linear(pred_dim, hidden)
        self.net = nn.Sequential(acts[activation](), nn.Dropout(dropout), nn.Linear(hidden, vocab_size + 1))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(B, T, E) encoder frames and (B, U + 1, P) prediction outputs -> (B, T, U + 1, V + 1) logits."""
        return self.net(self.enc(f)[:, :, None] + self.pred(g)[:, None])

    def step(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(B, E) frames and (B, P) prediction outputs -> (B, V + 1) logits."""
        return self.net(self.enc(f) + self.pred(g))


def rnnt_loss(log_probs: torch.Tensor, targets: torch.Tensor, frame_lengths: torch.Tensor,
              target_lengths: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Transducer loss: -log P(targets | frames), summed over every alignment.

    log_probs: (B, T, U + 1, V + 1) log-softmax of the joint network's output, blank last; targets (B, U)
    token ids; frame_lengths and target_lengths (B,). reduction: "none" (per utterance), "sum", or "mean"
    (of the per-utterance losses divided by their target lengths, NeMo's default ``mean_batch`` is "mean"
    of the raw losses: use "mean_batch" for that)."""
    if log_probs.ndim != 4:
        raise ConvformerError(f"log_probs must be (B, T, U + 1, V + 1), got {tuple(log_probs.shape)}")
    b, t_max, u1, _ = log_probs.shape
    u_max = u1 - 1
    if targets.shape[1] < u_max:
        raise ConvformerError(f"targets have {targets.shape[1]} steps; log_probs need {u_max}")
    if (frame_lengths > t_max).any() or (target_lengths > u_max).any() or (frame_lengths < 1).any():
        raise ConvformerError("frame or target lengths exceed the log_probs' T or U (or a frame length is 0)")
    blank_lp = log_probs[..., -1]                                               # (B, T, U + 1)
    emit_lp = log_probs[:, :, :u_max].gather(-1, targets[:, None, :u_max, None].expand(b, t_max, u_max, 1))[..., 0]
    neg = torch.tensor(float("-inf"), dtype=log_probs.dtype, device=log_probs.device)
    emit_lp = torch.cat([emit_lp, neg.expand(b, t_max, 1)], dim=2)  # a column to index when U = 0
    t_idx = torch.arange(t_max, device=log_probs.device)
    diag = torch.full((b, t_max), float("-inf"), dtype=log_probs.dtype, device=log_probs.device)
    diag = torch.where(t_idx == 0, torch.zeros_like(diag), diag)                  # alpha(0, 0) = 0
    diagonals = [diag]
    for d in range(1, t_max + u_max):
        u = d - t_idx                                                             # the cell (t, d - t)
        valid = (u >= 0) & (u <= u_max)
        uc = u.clamp(0, u_max)
        # from (t - 1, u) by a blank
        prev_t = torch.cat([neg.expand(b, 1), diag[:, :-1]], dim=1)
        blank_prev = torch.cat([neg.expand(b, 1), blank_lp[:, t_idx[:-1], uc[1:]]], dim=1)
        top = prev_t + blank_prev
        # from (t, u - 1) by emitting targets[u - 1]
        left = diag + emit_lp[:, t_idx, (uc - 1).clamp(min=0)]
        left = torch.where(u >= 1, left, neg)
        both = torch.stack([top, left])
        # a cell no path reaches: logsumexp of two -inf is -inf, but its gradient would be NaN, so such
        # cells get a finite stand-in and are set to -inf after the sum
        unreachable = torch.isinf(both).all(0) | ~valid
        new = torch.logsumexp(torch.where(unreachable[None], torch.zeros_like(both), both), dim=0)
        new = torch.where(unreachable, neg.expand_as(new), new)
        diagonals.append(new)
        diag = new
    alphas = torch.stack(diagonals, dim=1)                                        # (B, T + U, T)
    last_t = frame_lengths.long() - 1
    last_u = target_lengths.long()
    rows = torch.arange(b, device=log_probs.device)
    loglik = alphas[rows, last_t + last_u, last_t] + blank_lp[rows, last_t, last_u]
    loss = -loglik
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean_batch":
        return loss.mean()
    if reduction == "mean":
        return (loss / target_lengths.clamp(min=1).to(loss.dtype)).mean()
    raise ConvformerError(f"reduction must be 'none', 'sum', 'mean' or 'mean_batch', got {reduction!r}")


class GreedyTransducerDecoder:
    """Frame-by-frame greedy decoding (NeMo's ``GreedyRNNTInfer``): at each frame, emit the joint network's
    best token and advance the prediction network, until the blank wins or ``max_symbols`` tokens were
    emitted at that frame; then go to the next frame.

    The state between calls (the prediction network's LSTM state, its last output and the tokens so far) is
    kept per utterance, so feeding the encoder's frames in chunks gives exactly the offline transcript. The
    batch is looped frame by frame and advanced only where an utterance still emits: cost per frame is one
    joint step per emitted token plus one, and one LSTM step per emitted token."""

    def __init__(self, prediction: PredictionNetwork, joint: JointNetwork, batch: int, max_symbols: int = 10,
                 start: tuple | None = None):
        """``start``: (g, state) to continue from, e.g. rows of other decoders joined into one batch (a live
        server's tick); by default every utterance starts from the blank."""
        self.prediction, self.joint, self.max_symbols = prediction, joint, max_symbols
        self.blank = prediction.blank
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        if start is not None:
            self.g, self.state = start
            return
        device = next(prediction.parameters()).device
        with torch.no_grad():
            start = torch.full((batch,), self.blank, dtype=torch.long, device=device)
            self.g, self.state = prediction.step(start)

    def row(self, i: int) -> tuple:
        """Utterance ``i``'s decoding state, (g, state) of a batch of one: a ``start`` for a later decoder."""
        return self.g[i:i + 1], tuple(t[:, i:i + 1] for t in self.state)

    @torch.no_grad()
    def feed(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
        """Decode (B, T, E) encoder frames; ``lengths`` is the number of valid frames of each utterance, or a
        (B, T) boolean mask of the valid ones (a streaming step's). Returns the tokens emitted by this call
        per utterance (all tokens so far are in ``self.tokens``)."""
        b, t_max, _ = frames.shape
        if lengths is None:
            valid = torch.ones(b, t_max, dtype=torch.bool, device=frames.device)
        elif lengths.dtype == torch.bool:
            valid = lengths
        else:
            valid = torch.arange(t_max, device=frames.device)[None] < lengths.to(frames.device)[:, None]
        new: list[list[int]] = [[] for _ in range(b)]
        for t in range(t_max):
            active = valid[:, t]
            for _ in range(self.max_symbols):
                if not bool(active.any()):
                    break
                best = self.joint.step(frames[:, t], self.g).argmax(-1)
                emit = active & (best != self.blank)
                if not bool(emit.any()):
                    break
                g, state = self.prediction.step(torch.where(emit, best, torch.zeros_like(best)), self.state)
                keep = emit[:, None]
                self.g = torch.where(keep, g, self.g)
                self.state = tuple(torch.where(keep[None], s_new, s_old) for s_new, s_old in zip(state, self.state))
                for i in emit.nonzero()[:, 0].tolist():
                    new[i].append(int(best[i]))
                    self.tokens[i].append(int(best[i]))
                active = emit
        return new


def greedy_transducer_decode(prediction: PredictionNetwork, joint: JointNetwork, frames: torch.Tensor,
                             lengths: torch.Tensor | None = None, max_symbols: int = 10) -> list[list[int]]:
    """Offline greedy decoding of (B, T, E) encoder frames: token ids per utterance."""
    decoder = GreedyTransducerDecoder(prediction, joint, frames.shape[0], max_symbols)
    decoder.feed(frames, lengths)
    return decoder.tokens


def greedy_chunk_static(prediction: PredictionNetwork, joint: JointNetwork, frames: torch.Tensor, valid: torch.Tensor,
                        g: torch.Tensor, h: torch.Tensor, c: torch.Tensor, max_symbols: int = 10):
    """The greedy decoder of :class:`GreedyTransducerDecoder` over one chunk, with a fixed amount of work: every
    frame tries ``max_symbols`` emissions, masked where the blank already won, so the loop has no data-dependent
    exit and traces into a static graph (the ONNX streaming step). (B, T, E) frames, (B, T) valid mask, the
    prediction network's last output ``g`` (B, P) and LSTM state ``h``, ``c`` (layers, B, P). Returns the
    (B, T * max_symbols) tokens, -1 where nothing was emitted, and the new ``g``, ``h``, ``c``. Costs T x
    max_symbols joint and LSTM steps per chunk, whatever is emitted."""
    blank = prediction.blank
    emitted = []
    for t in range(frames.shape[1]):
        active = valid[:, t]
        for _ in range(max_symbols):
            best = joint.step(frames[:, t], g).argmax(-1)
            emit = active & (best != blank)
            g_new, (h_new, c_new) = prediction.step(torch.where(emit, best, torch.zeros_like(best)), (h, c))
            g = torch.where(emit[:, None], g_new, g)
            h = torch.where(emit[None, :, None], h_new, h)
            c = torch.where(emit[None, :, None], c_new, c)
            emitted.append(torch.where(emit, best, torch.full_like(best, -1)))
            active = emit
    tokens = torch.stack(emitted, dim=1) if emitted else frames.new_zeros(frames.shape[0], 0, dtype=torch.long)
    return tokens, g, h, c
