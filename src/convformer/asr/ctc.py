"""CTC greedy decoding, offline and as frames stream in, and the error rates it is scored by.

Greedy CTC takes the most likely class per frame, merges runs of the same class and drops blanks. The
streaming decoder keeps, per stream, the last frame's class across chunks, so a run split by a chunk
boundary is still merged: its final hypothesis equals the offline one whenever the frames do.
"""
from __future__ import annotations

import torch


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """log_probs (B, T, C), lengths (B,) -> one token list per utterance."""
    best = log_probs.argmax(-1)
    out = []
    for i in range(best.shape[0]):
        seq = best[i, :int(lengths[i])].tolist()
        tokens, prev = [], None
        for s in seq:
            if s != prev and s != blank:
                tokens.append(s)
            prev = s
        out.append(tokens)
    return out


class StreamingGreedyDecoder:
    """Feed the valid frames of each chunk; tokens come out as soon as their frame does."""

    def __init__(self, batch_size: int, blank: int):
        self.blank = blank
        self.prev = [None] * batch_size
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]

    def push(self, log_probs: torch.Tensor, valid: torch.Tensor) -> list[list[int]]:
        """log_probs (B, n, C) of one step, valid (B, n) from the streaming encoder. Returns the tokens
        each stream gained in this step (also accumulated in ``self.tokens``)."""
        best = log_probs.argmax(-1)
        new = []
        for i in range(best.shape[0]):
            gained = []
            for s in best[i][valid[i]].tolist():
                if s != self.prev[i] and s != self.blank:
                    gained.append(s)
                self.prev[i] = s
            self.tokens[i].extend(gained)
            new.append(gained)
        return new

    def reset(self, row: int) -> None:
        self.prev[row], self.tokens[row] = None, []


def edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev_diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev_diag + (r != h))
            prev_diag, row[j] = row[j], cur
    return row[-1]


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    """Corpus character and word error rates: total edits / total reference length."""
    char_edits = sum(edit_distance(list(r), list(h)) for r, h in zip(refs, hyps))
    word_edits = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    chars = sum(len(r) for r in refs)
    words = sum(len(r.split()) for r in refs)
    return {"cer": char_edits / max(chars, 1), "wer": word_edits / max(words, 1),
            "utterances": len(refs), "chars": chars, "words": words}
