"""`convformer asr train`: the speech model's training configuration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from convformer.engine.config import EngineOptions


@dataclass
class AsrTrainConfig(EngineOptions):
    """`convformer asr train`: the engine's options plus the speech data's."""
    model: str = "conformer_ctc_xs"
    data: str = "bundled"                # "bundled" (the espeak-ng corpus in data/speech) or a folder of manifests
    train_manifest: str = "train.jsonl"  # NeMo-style manifests (audio_filepath, text) inside the data folder
    val_manifest: str = "test.jsonl"
    vocab: str = "chars"                 # "chars" or a SentencePiece .model file
    spec_augment: bool = True            # SpecAugment on training features
    speed_perturb: bool = False          # each training item played at 0.9x, 1x or 1.1x speed (drawn per item)
    noise: float = 0.0                   # probability of adding noise at 10-30 dB SNR to a training item
    gain_db: float = 0.0                 # random gain of up to this many dB either way (volume perturbation)
    pad_silence: float = 0.0             # up to this many seconds of silence before and after each training item
    normalize: str = "utterance"         # log-mel normalisation: "utterance" (offline), "fixed" or "running" (causal, live)
    narrowband: str = "keep"             # audio recorded below 16 kHz: "keep" its empty upper mel bands or "mask" them
    ctc_weight: float = 0.3              # hybrid CTC/RNN-T models: loss = w * ctc + (1 - w) * rnnt
    model_kwargs: Optional[dict] = None  # more model options, e.g. {"att_context": [[32, 7]]} (a single-latency model)
    decoder: str = "auto"                # head that decodes in validation: "ctc", "rnnt" (hybrids), auto: rnnt if any
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-3
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    lr_schedule: str = "cosine"
    lr_decay: float = 0.95

    def task(self):
        from convformer.asr.task import SpeechRecognition
        return SpeechRecognition()
