"""The causal front end: log-mel features computed chunk by chunk from raw audio, for live recognition.

:class:`LogMelFrontend` normalises each mel band over the whole utterance, so it needs the end of the
audio before it can give the first frame. :class:`StreamingFrontend` gives the same log-mels (within float
rounding) as the audio arrives:

* frame ``t`` of the centred STFT covers samples ``t*hop - n_fft/2 .. t*hop + n_fft/2`` (zero before the
  start); the symmetric window of ``win`` samples sits in the middle of that span, so the frame can be
  computed once sample ``t*hop + win/2`` has arrived. ``finish()`` pads the tail with zeros exactly as the
  offline STFT does and gives the last frames (an utterance of n samples has ``n // hop`` frames);
* pre-emphasis carries the previous chunk's last sample;
* normalisation never looks ahead. :class:`FeatureNorm` names the choices:
  - ``"fixed"``: each band's mean and standard deviation measured once on the training data and stored in
    the weight file (``feature_stats`` in its metadata), the same for every frame;
  - ``"running"``: each band's mean and deviation over the frames seen so far, started from the fixed
    statistics with the weight of ``prior`` frames, so the first frames are not normalised by a handful of
    samples.
  Both also run offline (``normalize_features``), so a model can be trained and scored with the
  normalisation it streams with (``asr train --normalize fixed``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from convformer.asr.data import STD_GUARD, FrontendConfig, LogMelFrontend
from convformer.errors import ConvformerError

NORMALIZATIONS = ("utterance", "fixed", "running")


@dataclass(frozen=True)
class FeatureNorm:
    """How log-mels are normalised: "utterance" (per band over the whole utterance, offline only),
    "fixed" (stored statistics) or "running" (statistics so far, starting from the stored ones)."""
    mode: str = "utterance"
    mean: tuple = ()
    std: tuple = ()
    prior: float = 100.0      # "running": weight of the stored statistics, in frames

    def __post_init__(self):
        if self.mode not in NORMALIZATIONS:
            raise ConvformerError(f"normalisation {self.mode!r}: use one of {', '.join(NORMALIZATIONS)}")
        if self.mode != "utterance" and not self.mean:
            raise ConvformerError(f"{self.mode} normalisation needs feature statistics; this weight file has none "
                                  "(train with `asr train --normalize fixed`, or measure them with "
                                  "convformer.asr.live_frontend.feature_stats)")

    @property
    def causal(self) -> bool:
        return self.mode != "utterance"

    def to_meta(self) -> str:
        return json.dumps({"mean": list(self.mean), "std": list(self.std)})

    @classmethod
    def from_meta(cls, text: str | None, mode: str = "fixed", prior: float = 100.0) -> "FeatureNorm":
        if mode == "utterance":
            return cls()
        if not text:
            return cls(mode)  # raises: statistics needed
        stats = json.loads(text)
        return cls(mode, tuple(stats["mean"]), tuple(stats["std"]), prior)


def feature_stats(features) -> tuple[tuple, tuple]:
    """Per-band mean and standard deviation over every frame of un-normalised log-mels: an iterable of
    (frames, n_mels) tensors. Accumulated in float64, so a large corpus loses no digits."""
    count, total, squares = 0, None, None
    for f in features:
        f = f.double()
        total = f.sum(0) if total is None else total + f.sum(0)
        squares = (f * f).sum(0) if squares is None else squares + (f * f).sum(0)
        count += f.shape[0]
    if not count:
        raise ConvformerError("no feature frames to measure statistics on")
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0) * count / max(count - 1, 1)
    return tuple(mean.float().tolist()), tuple(var.sqrt().float().tolist())


class RunningNorm:
    """Per-band running mean and variance of the frames seen so far, blended with a prior (the stored
    statistics weighted as ``prior`` frames); normalises each frame by the statistics up to and including it."""

    def __init__(self, norm: FeatureNorm):
        self.mean0 = torch.tensor(norm.mean, dtype=torch.float64)
        self.var0 = torch.tensor(norm.std, dtype=torch.float64) ** 2
        self.prior = float(norm.prior)
        self.count, self.total, self.squares = 0, torch.zeros_like(self.mean0), torch.zeros_like(self.mean0)

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (frames, n_mels), the next frames of the stream -> normalised, same shape."""
        x = mel.double()
        counts = self.count + torch.arange(1, x.shape[0] + 1, dtype=torch.float64)[:, None]
        totals = self.total + x.cumsum(0)
        squares = self.squares + (x * x).cumsum(0)
        weight = self.prior + counts
        mean = (self.prior * self.mean0 + totals) / weight
        second = (self.prior * (self.var0 + self.mean0 ** 2) + squares) / weight
        std = (second - mean ** 2).clamp(min=0).sqrt()
        if x.shape[0]:
            self.count += x.shape[0]
            self.total, self.squares = totals[-1], squares[-1]
        return ((x - mean) / (std + STD_GUARD)).to(mel.dtype)


def normalize_features(mel: torch.Tensor, norm: FeatureNorm) -> torch.Tensor:
    """Un-normalised log-mels of one utterance (frames, n_mels) normalised the causal way ``norm`` names,
    as the streaming front end would: the offline twin of :class:`StreamingFrontend`."""
    if norm.mode == "fixed":
        mean = torch.tensor(norm.mean, dtype=mel.dtype)
        std = torch.tensor(norm.std, dtype=mel.dtype)
        return (mel - mean) / (std + STD_GUARD)
    if norm.mode == "running":
        return RunningNorm(norm)(mel)
    raise ConvformerError("utterance normalisation is not causal; use LogMelFrontend for it")


class CausalLogMel:
    """An offline front end with a causal normalisation: (samples,) -> (frames, n_mels) with the given
    :class:`FeatureNorm`; for "utterance" it is :class:`LogMelFrontend` itself."""

    def __init__(self, norm: FeatureNorm = FeatureNorm(), cfg: FrontendConfig = FrontendConfig()):
        self.norm = norm
        self.offline = LogMelFrontend(cfg).eval()
        self.raw = LogMelFrontend(FrontendConfig(**{**cfg.__dict__, "normalize": "none"})).eval()
        self.cfg = cfg
        self.hop = self.offline.hop

    def __call__(self, wave: torch.Tensor, band_limit_hz: float | None = None):
        """Like LogMelFrontend: (1, frames, n_mels) and the frame count."""
        if self.norm.mode == "utterance":
            return self.offline(wave, band_limit_hz=band_limit_hz)
        mel, frames = self.raw(wave)
        mel = normalize_features(mel[0], self.norm)[None]
        if band_limit_hz is not None and band_limit_hz < self.cfg.sample_rate / 2:
            mel = mel.masked_fill(self.raw.bands_above(band_limit_hz)[None, None, :], 0.0)
        return mel, frames


class StreamingFrontend:
    """Raw audio in, normalised log-mel frames out, as soon as each frame's samples have arrived.

    ``push(samples)`` takes the next float samples (any count) at the front end's rate and returns the
    frames they complete, (k, n_mels); ``finish()`` returns the rest, as the offline front end computes
    them for the whole recording. Concatenated, the outputs equal ``CausalLogMel(norm)(all samples)``."""

    def __init__(self, norm: FeatureNorm, cfg: FrontendConfig = FrontendConfig()):
        if not norm.causal:
            raise ConvformerError("live audio needs a causal normalisation (fixed or running): per-utterance "
                                  "statistics need the end of the utterance first")
        self.cfg, self.norm = cfg, norm
        self.lfe = LogMelFrontend(FrontendConfig(**{**cfg.__dict__, "normalize": "none", "dither": 0.0})).eval()
        self.hop, self.win, self.half = self.lfe.hop, self.lfe.win, cfg.n_fft // 2
        self.running = RunningNorm(norm) if norm.mode == "running" else None
        # pre-emphasised samples from absolute index `origin` on (those before are no longer needed)
        self.buffer = torch.zeros(0)
        self.origin = 0
        self.received = 0
        self.last = None          # the previous raw sample, for pre-emphasis
        self.next_frame = 0
        self.finished = False

    @property
    def frames_out(self) -> int:
        return self.next_frame

    def push(self, samples) -> torch.Tensor:
        if self.finished:
            raise ConvformerError("audio after the end of the stream")
        x = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
        if x.numel():
            if self.cfg.preemph:
                prev = x[:1] if self.last is None else self.last.reshape(1)
                shifted = torch.cat([prev, x[:-1]])
                y = x - self.cfg.preemph * shifted
                if self.last is None:
                    y[0] = x[0]
                self.last = x[-1].clone()
            else:
                y = x
            self.buffer = torch.cat([self.buffer, y])
            self.received += x.numel()
        # frame t is ready once its window's last sample (t*hop + win/2 - 1 after centring) has arrived
        ready = (self.received - (self.win + 1) // 2) // self.hop + 1 if self.received >= (self.win + 1) // 2 else 0
        return self._frames(min(ready, self.received // self.hop))

    def finish(self) -> torch.Tensor:
        if self.finished:
            return torch.zeros(0, self.cfg.n_mels)
        self.finished = True
        return self._frames(self.received // self.hop)

    def _frames(self, upto: int) -> torch.Tensor:
        """Frames next_frame .. upto-1, normalised; drops samples no later frame needs."""
        t0 = self.next_frame
        if upto <= t0:
            return torch.zeros(0, self.cfg.n_mels)
        start, end = t0 * self.hop - self.half, (upto - 1) * self.hop + self.half   # span of those frames
        lo = max(start - self.origin, 0)
        seg = self.buffer[lo:end - self.origin]
        seg = torch.cat([torch.zeros(max(self.origin - start, 0)), seg,
                         torch.zeros(max(end - self.origin - self.buffer.numel(), 0))])
        spec = torch.stft(seg[None], self.cfg.n_fft, self.hop, self.win, window=self.lfe.window, center=False,
                          return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1)
        mel = torch.log(self.lfe.fb @ power + self.cfg.log_guard)[0].T      # (frames, n_mels)
        self.next_frame = upto
        keep_from = upto * self.hop - self.half
        if keep_from > self.origin:
            self.buffer = self.buffer[keep_from - self.origin:]
            self.origin = keep_from
        return self.running(mel) if self.running is not None else normalize_features(mel, self.norm)


def model_norm(model, mode: str | None = None, prior: float = 100.0) -> FeatureNorm:
    """The causal normalisation to stream ``model`` with (see ``load_asr``): ``mode`` None is the one it was
    trained with when that is causal, else "fixed" from its training data's statistics. ("running" is a
    little closer to per-utterance statistics on short utterances, but minutes of silence leave it with
    silence's statistics, and the speech after them is far outside what the model saw: docs/asr.md.)"""
    trained = getattr(model, "feature_norm", "utterance")
    chosen = mode or (trained if trained != "utterance" else "fixed")
    if chosen == "utterance":
        raise ConvformerError("--normalize utterance is not causal; live audio needs fixed or running")
    stats = getattr(model, "feature_stats", None)
    if not stats:
        raise ConvformerError("this weight file has no feature statistics, which live recognition needs; train it "
                              "with a current `convformer asr train` (it records them)")
    return FeatureNorm.from_meta(stats, chosen, prior)


def frontend_for(model):
    """The offline front end a loaded model (``load_asr``) was trained with: per-utterance normalisation, or
    the causal one recorded in its weight file."""
    mode = getattr(model, "feature_norm", "utterance")
    if mode == "utterance":
        return LogMelFrontend(FrontendConfig()).eval()
    return CausalLogMel(FeatureNorm.from_meta(getattr(model, "feature_stats", None), mode))
