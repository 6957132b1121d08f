"""Speech front end: audio files, log-mel features with NeMo's conventions, SpecAugment, vocabularies.

The features follow NVIDIA NeMo's ``AudioToMelSpectrogramPreprocessor`` defaults so that encoders trained
in NeMo see the input they were trained on: pre-emphasis 0.97 (zero beyond the audio's length), a
symmetric Hann window of 25 ms, 10 ms hop, n_fft 512, centred STFT with zero padding, power spectrum,
Slaney-style mel filterbank (80 bands, 0 Hz to Nyquist, area-normalised), log(x + 2^-24), each mel band
normalised to zero mean and unit standard deviation over the utterance's valid frames, frames beyond the
length zeroed. An utterance of n samples gives n // hop frames (NeMo drops the STFT's last frame).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from convformer.errors import ConvformerError

STD_GUARD = 1e-5


# ---- mel filterbank (Slaney's Auditory Toolbox scale, as librosa's default) ---------------------------
# Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), then 27 mels per factor 6.4 in frequency
_HZ_PER_MEL = 200.0 / 3
_LOG_HZ = 1000.0
_LOG_MEL = _LOG_HZ / _HZ_PER_MEL
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz >= _LOG_HZ, _LOG_MEL + np.log(np.maximum(hz, 1e-10) / _LOG_HZ) / _LOG_STEP, hz / _HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _LOG_MEL, _LOG_HZ * np.exp(_LOG_STEP * (mel - _LOG_MEL)), mel * _HZ_PER_MEL)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters equally spaced on the mel scale, each scaled by
    2 / (bandwidth in Hz) so every filter has the same area ("slaney" normalisation)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    fb = np.maximum(0, np.minimum(lower, upper))
    return (fb * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    preemph: float = 0.97
    log_guard: float = 2 ** -24
    normalize: str = "per_feature"          # or "none"
    dither: float = 1e-5                    # training only


class LogMelFrontend(nn.Module):
    """Waveforms (B, samples) + lengths -> features (B, frames, n_mels) + frame counts."""

    def __init__(self, cfg: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.cfg = cfg
        self.win = int(round(cfg.sample_rate * cfg.window_ms / 1000))
        self.hop = int(round(cfg.sample_rate * cfg.hop_ms / 1000))
        self.register_buffer("window", torch.hann_window(self.win, periodic=False), persistent=False)
        self.register_buffer("fb", torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)),
                             persistent=False)

    def num_frames(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.div(samples, self.hop, rounding_mode="floor")

    def bands_above(self, hz: float) -> torch.Tensor:
        """(n_mels,) True for the mel bands that lie wholly above ``hz`` (no filter weight at or below it)."""
        bins = torch.linspace(0, self.cfg.sample_rate / 2, self.fb.shape[1], device=self.fb.device)
        return ((self.fb > 0) & (bins[None] <= hz)).sum(1) == 0

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, band_limit_hz: float | None = None):
        """``band_limit_hz``: the recording's own Nyquist frequency when it was sampled below our rate (8 kHz
        telephone audio: 4000). The bands above it hold nothing but resampling residue, which per-band
        normalisation would blow up to unit-variance noise; they are set to 0, the normalised mean, as
        SpecAugment's frequency masks are, in training and inference alike."""
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        b, n = audio.shape
        lengths = torch.full((b,), n, dtype=torch.long, device=audio.device) if lengths is None else lengths.long()
        frames = self.num_frames(lengths)
        x = audio.float()
        if self.training and self.cfg.dither > 0:
            x = x + self.cfg.dither * torch.randn_like(x)
        if self.cfg.preemph:
            x = torch.cat([x[:, :1], x[:, 1:] - self.cfg.preemph * x[:, :-1]], dim=1)
            x = x.masked_fill(torch.arange(n, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1), 0.0)
        spec = torch.stft(x, self.cfg.n_fft, self.hop, self.win, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1)          # |X|^2: magnitude, then squared
        mel = torch.log(self.fb @ power + self.cfg.log_guard)     # (B, n_mels, T)
        valid = torch.arange(mel.shape[-1], device=x.device).unsqueeze(0) < frames.unsqueeze(1)
        if self.cfg.normalize == "per_feature":
            count = valid.sum(1, keepdim=True).unsqueeze(1).float()
            mean = torch.where(valid.unsqueeze(1), mel, 0.0).sum(2, keepdim=True) / count
            var = torch.where(valid.unsqueeze(1), mel - mean, 0.0).pow(2).sum(2, keepdim=True) / (count - 1)
            std = torch.nan_to_num(var.sqrt(), nan=0.0, posinf=0.0) + STD_GUARD
            mel = (mel - mean) / std
        mel = mel.masked_fill(~valid.unsqueeze(1), 0.0)
        if band_limit_hz is not None and band_limit_hz < self.cfg.sample_rate / 2:
            mel = mel.masked_fill(self.bands_above(band_limit_hz)[None, :, None], 0.0)
        width = int(frames.max()) if b else 0
        return mel[:, :, :width].transpose(1, 2).contiguous(), frames


class SpecAugment(nn.Module):
    """Park et al.: zero ``freq_masks`` bands of up to ``freq_width`` mels and ``time_masks`` spans of up
    to ``time_width`` (a fraction of the utterance) frames; training only. Features (B, T, F)."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 10, time_width: float = 0.05):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        x = x.clone()
        b, t, f = x.shape
        for i in range(b):
            n = int(lengths[i])
            for _ in range(self.freq_masks):
                w = int(torch.randint(0, self.freq_width + 1, ()))
                s = int(torch.randint(0, max(1, f - w + 1), ()))
                x[i, :, s:s + w] = 0.0
            span = max(1, int(self.time_width * n))
            for _ in range(self.time_masks):
                w = int(torch.randint(0, span + 1, ()))
                s = int(torch.randint(0, max(1, n - w + 1), ()))
                x[i, s:s + w, :] = 0.0
        return x


class WaveAugment:
    """Waveform augmentation as speech toolkits apply it before the front end, drawn from torch's global
    generator (so the engine's seeds make it repeatable): speed perturbation (Ko et al. 2015: resample so the
    utterance plays ``speed`` times faster, which moves pitch and formants too, imitating other voices), a
    gain of up to ``gain_db`` either way, and with probability ``noise`` additive noise (white, or reddened by
    a random one-pole filter) at an SNR drawn from ``snr_db``.

    A gain g adds log(g^2) to every band, which per-band normalisation removes, except where the power is
    near the log guard (2^-24) or the dither: silences. So gain perturbation acts mainly on how quiet passages
    look to the model."""

    def __init__(self, speeds=(0.9, 1.0, 1.1), gain_db: float = 0.0, noise: float = 0.0,
                 snr_db: tuple[float, float] = (10.0, 30.0), pad_silence: float = 0.0, sample_rate: int = 16000):
        if any(s <= 0 for s in speeds) or not speeds:
            raise ConvformerError(f"speed perturbation factors must be positive, got {list(speeds)}")
        if not 0.0 <= noise <= 1.0:
            raise ConvformerError(f"the noise probability must be within [0, 1], got {noise}")
        if pad_silence < 0:
            raise ConvformerError(f"--pad-silence must be >= 0 seconds, got {pad_silence}")
        self.speeds, self.gain_db, self.noise, self.snr_db = tuple(speeds), gain_db, noise, tuple(snr_db)
        self.pad_silence, self.sample_rate = pad_silence, sample_rate

    @property
    def fastest(self) -> float:
        return max(self.speeds)

    @staticmethod
    def change_speed(wave: torch.Tensor, speed: float) -> torch.Tensor:
        if speed == 1.0:
            return wave
        from fractions import Fraction
        from scipy.signal import resample_poly
        ratio = Fraction(1 / speed).limit_denominator(100)
        out = resample_poly(wave.numpy(), ratio.numerator, ratio.denominator)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def __call__(self, wave: torch.Tensor, fastest: float = float("inf")) -> torch.Tensor:
        """A perturbed copy of ``wave``; a drawn speed above ``fastest`` (an utterance that would become too
        short for its transcript) plays at 1x instead."""
        speed = self.speeds[int(torch.randint(len(self.speeds), ()))]
        speed = speed if speed <= fastest else 1.0
        wave = self.change_speed(wave, speed)
        if self.gain_db:
            wave = wave * 10 ** (float(torch.empty(()).uniform_(-self.gain_db, self.gain_db)) / 20)
        if self.noise and float(torch.rand(())) < self.noise:
            noise = torch.randn(wave.shape)
            pole = float(torch.rand(())) * 0.95
            if pole > 0.05:
                from scipy.signal import lfilter
                noise = torch.from_numpy(lfilter([1.0], [1.0, -pole], noise.numpy()).astype(np.float32))
            snr = float(torch.empty(()).uniform_(*self.snr_db))
            power = wave.pow(2).mean().clamp(min=1e-10)
            noise = noise * (power / noise.pow(2).mean().clamp(min=1e-10) / 10 ** (snr / 10)).sqrt()
            wave = wave + noise
        if self.pad_silence:
            wave = self.pad(wave)
        return wave

    def pad(self, wave: torch.Tensor) -> torch.Tensor:
        """Up to ``pad_silence`` seconds of silence before and after (each drawn uniformly), at a noise floor
        drawn between digital silence and a quiet room (-70..-50 dBFS): what a live stream holds around
        speech and the corpus's trimmed recordings never show the model."""
        most = int(self.pad_silence * self.sample_rate)
        before, after = (int(v) for v in torch.randint(most + 1, (2,)))
        level = 0.0 if float(torch.rand(())) < 0.25 else 10 ** (float(torch.empty(()).uniform_(-70, -50)) / 20)
        return torch.cat([torch.randn(before) * level, wave, torch.randn(after) * level])


# ---- audio files -----------------------------------------------------------------------------------------
def audio_rate(path: str | os.PathLike) -> int:
    """The sample rate a file was recorded at (read from its header)."""
    import soundfile as sf
    if not os.path.exists(os.fspath(path)):
        raise ConvformerError(f"{path}: no such audio file")
    try:
        return int(sf.info(os.fspath(path)).samplerate)
    except Exception as err:  # noqa: BLE001
        raise ConvformerError(f"{path} is not a readable audio file ({err}); use WAV or FLAC") from None


def band_limit(path: str | os.PathLike, sample_rate: int = 16000) -> float | None:
    """The recording's Nyquist frequency if it is below ``sample_rate``'s (narrowband audio), else None."""
    rate = audio_rate(path)
    return rate / 2 if rate < sample_rate else None


def resample(samples: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Mono float32 samples from ``rate`` to ``sample_rate`` (polyphase; unchanged when they are equal)."""
    if rate == sample_rate:
        return samples
    from scipy.signal import resample_poly
    g = math.gcd(int(rate), int(sample_rate))
    return resample_poly(samples, int(sample_rate) // g, int(rate) // g).astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, with_limit: bool = False):
    """A mono float waveform at ``sample_rate`` from WAV/FLAC/OGG (any rate; resampled polyphase). Audio
    recorded below ``sample_rate`` has nothing above its own Nyquist frequency: ``with_limit`` also returns
    that frequency (``band_limit``'s answer, from the same read), or None for wideband audio."""
    try:
        import soundfile as sf
    except ImportError:
        raise ConvformerError("reading audio needs soundfile: pip install soundfile") from None
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConvformerError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - libsndfile reports every unreadable file this way
        raise ConvformerError(f"{path} is not a readable audio file ({err}); use WAV or FLAC") from None
    if data.shape[0] == 0:
        raise ConvformerError(f"{path} holds no audio samples")
    data = resample(data.mean(axis=1), rate, sample_rate)
    wave = torch.from_numpy(np.ascontiguousarray(data))
    return (wave, rate / 2 if rate < sample_rate else None) if with_limit else wave


# ---- vocabularies ----------------------------------------------------------------------------------------
class CharVocabulary:
    """Lower-case letters, space and apostrophe (28 symbols); CTC's blank is index ``len(vocab)``."""

    def __init__(self, symbols: str = " abcdefghijklmnopqrstuvwxyz'"):
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def normalize(self, text: str) -> str:
        text = "".join(c if c in self.index else " " for c in text.lower())
        return " ".join(text.split())

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in self.normalize(text)]

    def decode(self, ids) -> str:
        return "".join(self.symbols[i] for i in ids if 0 <= i < len(self.symbols))


class SentencePieceVocabulary:
    """A trained SentencePiece model (``.model`` file) as the CTC vocabulary."""

    def __init__(self, model_file: str | os.PathLike):
        try:
            import sentencepiece as spm
        except ImportError:
            raise ConvformerError("a SentencePiece vocabulary needs sentencepiece: pip install sentencepiece") from None
        if not os.path.exists(model_file):
            raise ConvformerError(f"{model_file}: no such SentencePiece model")
        self.model_file = os.path.abspath(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def normalize(self, text: str) -> str:
        return " ".join(text.lower().split())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(self.normalize(text))

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])
