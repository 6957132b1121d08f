"""Speech recognition as a task of the one training engine, and transcription offline or streaming.

Data are NeMo-style manifests (one JSON object per line with ``audio_filepath`` and ``text``; relative
paths are relative to the manifest). Features are computed once when the data set is built, so an epoch
costs only the model; SpecAugment is drawn per item under the engine's seeds, so resume stays exact.
The loss is CTC (summed over each utterance's frames, averaged over utterances); validation decodes
greedily and reports corpus CER and WER in percent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from convformer.progress import progress_bar

from convformer.asr.data import (CharVocabulary, FrontendConfig, LogMelFrontend, SentencePieceVocabulary, SpecAugment,
                           WaveAugment, load_audio)
from convformer.errors import ConvformerError
from convformer.asr.live_frontend import NORMALIZATIONS, CausalLogMel, FeatureNorm, feature_stats
from convformer.asr.transducer import GreedyTransducerDecoder, rnnt_loss
from convformer.asr.ctc import StreamingGreedyDecoder, edit_distance, error_rates, greedy_decode
from convformer.engine.tasks import Task, TaskData, model_options

BUNDLED = Path(__file__).resolve().parents[3] / "data" / "speech"


def resolve_data(data: str) -> Path:
    folder = BUNDLED if data == "bundled" else Path(data)
    if not folder.is_dir():
        hint = ("the bundled corpus lives in the source repository's data/speech; pass --data FOLDER"
                if data == "bundled" else "pass a folder holding the manifests")
        raise ConvformerError(f"speech data folder {folder} not found ({hint})")
    return folder


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Entries of a JSON-lines manifest with absolute audio paths; each line must have audio_filepath and text."""
    path = Path(path)
    if not path.is_file():
        raise ConvformerError(f"manifest {path} not found")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConvformerError(f"{path}:{n} is not JSON ({err.msg})") from None
        if not isinstance(entry, dict) or "audio_filepath" not in entry or "text" not in entry:
            raise ConvformerError(f"{path}:{n} needs both audio_filepath and text")
        audio = Path(entry["audio_filepath"])
        entry["audio_filepath"] = str(audio if audio.is_absolute() else path.parent / audio)
        entries.append(entry)
    if not entries:
        raise ConvformerError(f"manifest {path} lists no utterances")
    return entries


def read_manifests(folder: Path, names) -> list[dict]:
    """The entries of one or several manifests (a comma-separated string or a list), each a path inside the
    data folder or an absolute one; audio of any sample rate is resampled on load."""
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    entries = []
    for name in names:
        if name:
            entries += read_manifest(Path(folder) / name)
    if not entries:
        raise ConvformerError(f"no manifest given (got {names!r})")
    return entries


def narrowband_masking(option: str) -> bool:
    """``--narrowband``: "keep" the bands above a narrowband recording's Nyquist frequency as they come out
    of resampling (the default: measured better, benchmarks/results/asr_narrowband.md), or "mask" them."""
    if option not in ("keep", "mask"):
        raise ConvformerError(f"--narrowband must be keep or mask, not {option!r}")
    return option == "mask"


def wave_augment(cfg) -> WaveAugment | None:
    """The training waveform augmentation the config asks for (None: features are computed once)."""
    speeds = (0.9, 1.0, 1.1) if cfg.speed_perturb else (1.0,)
    if speeds == (1.0,) and not cfg.noise and not cfg.gain_db and not cfg.pad_silence:
        return None
    return WaveAugment(speeds, gain_db=cfg.gain_db, noise=cfg.noise, pad_silence=cfg.pad_silence)


def build_vocabulary(spec: str):
    if spec == "chars":
        return CharVocabulary()
    if spec.endswith(".model"):
        return SentencePieceVocabulary(spec)
    raise ConvformerError(f"--vocab must be 'chars' or a SentencePiece .model file, not {spec!r}")


def vocabulary_meta(vocab) -> str:
    """How a weight file records its vocabulary: the symbols themselves, or the SentencePiece model's path."""
    return json.dumps({"chars": "".join(vocab.symbols)} if isinstance(vocab, CharVocabulary)
                      else {"sentencepiece": vocab.model_file})


def vocabulary_from_meta(text: str):
    spec = json.loads(text)
    return CharVocabulary(spec["chars"]) if "chars" in spec else SentencePieceVocabulary(spec["sentencepiece"])


class Utterances(Dataset):
    """Log-mel features and token ids of every manifest entry, computed once; with ``wave_augment`` the
    waveforms are kept instead and each item's features are computed from a freshly perturbed copy.
    ``mask_narrowband``: zero the mel bands above a narrowband recording's own Nyquist frequency."""

    def __init__(self, entries: list[dict], vocab, frontend: LogMelFrontend, subsampling=None,
                 augment: SpecAugment | None = None, progress: bool = False, what: str = "utterances",
                 wave_augment: WaveAugment | None = None, mask_narrowband: bool = False):
        self.texts, self.features, self.tokens, self.waves, self.limits, self.fastest = [], [], [], [], [], []
        self.augment, self.wave_augment, self.frontend, self.narrowband = augment, wave_augment, frontend, 0
        for entry in progress_bar(entries, desc=f"features ({what})", disable=not progress, leave=False, unit="utt"):
            rate = frontend.cfg.sample_rate
            wave, limit = load_audio(entry["audio_filepath"], rate, with_limit=True)
            self.narrowband += limit is not None
            limit = limit if mask_narrowband else None
            feats, _ = frontend(wave, band_limit_hz=limit)
            tokens = vocab.encode(entry["text"])
            if not tokens:
                raise ConvformerError(f"{entry['audio_filepath']}: its transcript {entry['text']!r} has no "
                                      "symbol of the vocabulary")
            fastest = float("inf")
            if subsampling is not None:  # CTC needs a frame per token, and one more between repeats
                need = len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))
                frames = int(subsampling(torch.tensor([feats.shape[1]])))
                if frames < need:
                    raise ConvformerError(f"{entry['audio_filepath']} is too short for its transcript ({frames} "
                                          f"encoder frames, {need} needed); drop it from the manifest")
                if wave_augment is not None:  # the fastest speed-up that still leaves enough frames
                    fastest = max(s for s in wave_augment.speeds + (1.0,)
                                  if int(subsampling(torch.tensor([int(feats.shape[1] / s) - 1]))) >= need)
            self.texts.append(vocab.normalize(entry["text"]))
            self.tokens.append(torch.tensor(tokens, dtype=torch.long))
            if wave_augment is None:
                self.features.append(feats[0])
            else:
                self.waves.append(wave)
                self.limits.append(limit)
                self.fastest.append(fastest)
                self.features.append(None)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        feats = self.features[i]
        if feats is None:
            wave = self.wave_augment(self.waves[i], self.fastest[i])
            feats = self.frontend(wave, band_limit_hz=self.limits[i])[0][0]
        if self.augment is not None:
            feats = self.augment.train()(feats[None], torch.tensor([len(feats)]))[0]
        return feats, self.tokens[i], i


def collate_utterances(items):
    """(features (B, T, F) zero-padded, lengths (B,), tokens (B, L) padded with -1, token lengths, indices)."""
    feats, tokens, index = zip(*items)
    lengths = torch.tensor([len(f) for f in feats])
    token_lengths = torch.tensor([len(t) for t in tokens])
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    labels = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=-1)
    return padded, lengths, labels, token_lengths, torch.tensor(index)


def ctc_loss(log_probs, out_lengths, labels, label_lengths, blank: int) -> torch.Tensor:
    """CTC negative log-likelihood summed over each utterance, averaged over the batch."""
    loss = F.ctc_loss(log_probs.float().transpose(0, 1), labels.clamp(min=0), out_lengths, label_lengths,
                      blank=blank, reduction="sum", zero_infinity=False)
    return loss / len(label_lengths)


class SpeechRecognition(Task):
    name = "speech"
    train_stat = "cer"
    val_metrics = ("cer", "wer")
    best_metric = "cer"
    higher_is_better = False
    curve = ("cer", "CER", "character error rate (%)")

    def build(self, cfg, progress: bool) -> TaskData:
        from convformer.registry import create_model, model_card
        if model_card(cfg.model).task != "speech":
            raise ConvformerError(f"{cfg.model} is not a speech model; see `convformer models` (conformer_ctc_*)")
        folder = resolve_data(cfg.data)
        self.vocab = build_vocabulary(cfg.vocab)
        self.blank = len(self.vocab)
        if cfg.normalize not in NORMALIZATIONS:
            raise ConvformerError(f"--normalize {cfg.normalize!r}: use one of {', '.join(NORMALIZATIONS)}")
        train_entries = read_manifests(folder, cfg.train_manifest)
        # the training audio's log-mel statistics: stored with the weights for live (causal) recognition, and
        # the normalisation itself when the model is trained the causal way
        raw = LogMelFrontend(FrontendConfig(normalize="none")).eval()
        stats = feature_stats(raw(load_audio(e["audio_filepath"]))[0][0]
                              for e in progress_bar(train_entries, desc="feature statistics", disable=not progress,
                                                    leave=False, unit="utt"))
        norm = FeatureNorm(cfg.normalize, *stats) if cfg.normalize != "utterance" else FeatureNorm()
        frontend = CausalLogMel(norm)
        extra = model_options(cfg, {"vocab_size": len(self.vocab)})
        probe = create_model(cfg.model, vocab_size=len(self.vocab), **extra)
        subsample = probe.encoder.subsampling.output_length
        self.hybrid = hasattr(probe, "joint")  # a CTC/RNN-T hybrid (convformer.asr.hybrid)
        self.decoder = pick_decoder(probe, cfg.decoder)
        if not 0.0 <= cfg.ctc_weight <= 1.0:
            raise ConvformerError(f"--ctc-weight must be within [0, 1], got {cfg.ctc_weight}")
        self.ctc_weight = cfg.ctc_weight if probe.head is not None else 0.0  # a transducer has no CTC head
        # a multi-latency model validates at every context it was trained for, and is judged on their mean
        self.contexts = [tuple(c) for c in probe.cfg.att_context]
        per_context = [f"{m}_{left}_{right}" for left, right in self.contexts for m in ("cer", "wer")]
        self.val_metrics = ("cer", "wer", *per_context) if len(self.contexts) > 1 else ("cer", "wer")
        mask = narrowband_masking(cfg.narrowband)
        waves = wave_augment(cfg)
        train = Utterances(train_entries, self.vocab, frontend, subsample,
                           SpecAugment() if cfg.spec_augment else None, progress, "train", waves, mask)
        val = Utterances(read_manifests(folder, cfg.val_manifest), self.vocab, frontend, subsample,
                         None, progress, "validation", mask_narrowband=mask)
        self.val_texts = val.texts
        seconds = sum(len(f) if f is not None else len(w) // frontend.hop
                      for f, w in zip(train.features, train.waves or train.features)) / 100
        if (train.narrowband or val.narrowband) and progress:
            from convformer.progress import write as progress_write
            progress_write(f"note: {train.narrowband} training and {val.narrowband} validation utterances were "
                           "recorded below 16 kHz; their mel bands above the recording's Nyquist frequency are "
                           + ("masked (set to the normalised mean)" if mask else
                              "kept (--narrowband mask sets them to the normalised mean)"))
        resolved = {"train_utterances": len(train), "val_utterances": len(val), "train_hours": seconds / 3600,
                    "narrowband_utterances": {"train": train.narrowband, "val": val.narrowband},
                    "data_folder": str(folder)}
        meta = {"vocabulary": vocabulary_meta(self.vocab), "task": "speech", "narrowband": cfg.narrowband,
                "feature_norm": cfg.normalize, "feature_stats": FeatureNorm("fixed", *stats).to_meta()}
        if extra:  # so that eval/transcribe/export rebuild the same network from the weight file
            meta["model_kwargs"] = json.dumps(extra)
        return TaskData(train, val, {"vocab_size": len(self.vocab), **extra}, resolved, meta,
                        collate=collate_utterances)

    def prepare(self, batch, cfg, device, seed_parts: tuple):
        feats, lengths, labels, label_lengths, _ = batch
        refs = [row[:n].tolist() for row, n in zip(labels, label_lengths)]
        inputs = (feats.to(device), lengths.to(device)) + ((labels.to(device),) if self.hybrid else ())
        return inputs, (labels.to(device), label_lengths.to(device)), refs

    def forward(self, model, inputs):
        return model(*inputs)

    def loss(self, output, labels):
        """CTC; for a hybrid, ``ctc_weight * ctc + (1 - ctc_weight) * rnnt`` (both per utterance, batch mean)."""
        log_probs, out_lengths = output[:2]
        ctc = ctc_loss(log_probs, out_lengths, *labels, blank=self.blank) if log_probs is not None else 0.0
        if len(output) == 2:
            return ctc
        targets, target_lengths = labels
        rnnt = rnnt_loss(output[2], targets.clamp(min=0), out_lengths, target_lengths, reduction="mean_batch")
        return self.ctc_weight * ctc + (1 - self.ctc_weight) * rnnt if self.ctc_weight else rnnt

    def statistic(self, output, refs) -> float:
        """Per-utterance character error rate (%) of the CTC head's greedy decoding, summed over the batch
        (NaN for a transducer, which has no CTC head: its training CER would cost a decoding per batch)."""
        if output[0] is None:
            return float("nan") * len(refs)
        hyps = greedy_decode(*output[:2], blank=self.blank)
        return sum(100.0 * edit_distance(r, h) / max(len(r), 1) for r, h in zip(refs, hyps))

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict:
        """Loss, CER and WER; for a multi-latency model at each context (``cer_<left>_<right>``, ...) with
        ``cer``/``wer``/``loss`` their means, so that the best checkpoint is the best on all look-aheads."""
        model.eval()
        contexts = getattr(self, "contexts", [None])
        if len(contexts) == 1:
            return self._evaluate_at(model, loader, device)
        encoder, chosen = model.encoder, model.encoder.context_index
        results = {}
        try:
            for i, (left, right) in enumerate(contexts):
                encoder.set_context(i)
                results[(left, right)] = self._evaluate_at(model, loader, device)
        finally:
            encoder.set_context(chosen)
        out = {k: sum(r[k] for r in results.values()) / len(results) for k in ("loss", "cer", "wer")}
        for (left, right), r in results.items():
            out.update({f"cer_{left}_{right}": r["cer"], f"wer_{left}_{right}": r["wer"]})
        return {**out, "count": next(iter(results.values()))["count"]}

    def _evaluate_at(self, model, loader, device) -> dict:
        loss_sum, refs, hyps = 0.0, [], []
        for feats, lengths, labels, label_lengths, index in loader:
            feats, lengths, labels, label_lengths = (v.to(device) for v in (feats, lengths, labels, label_lengths))
            output = model(feats, lengths, labels) if self.hybrid else model(feats, lengths)
            loss_sum += float(self.loss(output, (labels, label_lengths))) * len(index)
            tokens = model.transducer_decode(feats, lengths) if self.decoder == "rnnt" else \
                greedy_decode(output[0], output[1], self.blank)
            hyps += [self.vocab.decode(t) for t in tokens]
            refs += [self.val_texts[i] for i in index.tolist()]
        rates = error_rates(refs, hyps)
        n = max(len(refs), 1)
        return {"loss": loss_sum / n, "cer": 100 * rates["cer"], "wer": 100 * rates["wer"], "count": len(refs)}

    def summary(self, row: dict) -> str:
        ema = f"  EMA CER {row['ema_val_cer']:.1f}%" if "ema_val_cer" in row else ""
        contexts = getattr(self, "contexts", [])
        each = "  (" + ", ".join(f"[{l},{r}] {row[f'val_cer_{l}_{r}']:.1f}%" for l, r in contexts) + ")" \
            if len(contexts) > 1 else ""
        return (f"train CER {row['train_cer']:.1f}%  val loss {row['val_loss']:.3f}  CER {row['val_cer']:.1f}%{each}  "
                f"WER {row['val_wer']:.1f}%{ema}")


# ---- inference -------------------------------------------------------------------------------------------
def load_asr(weights: str, model_name: str | None = None, loaded: tuple | None = None):
    """(model in eval mode, vocabulary) from our weight file (its metadata names both) or a NeMo ``.nemo``;
    ``loaded`` is the file's (state dict, metadata) where the caller has read it already."""
    from convformer.registry import create_model
    from convformer.weights import load_weights, read_state_dict
    if str(weights).endswith(".nemo"):
        from convformer.asr.nemo import conformer_from_nemo
        model = conformer_from_nemo(weights).eval()
        symbols = model.nemo_vocabulary
        if not symbols or any(len(s) != 1 for s in symbols):
            raise ConvformerError(f"{weights} has a subword vocabulary; only character vocabularies load from "
                                  ".nemo so far")
        return model, CharVocabulary("".join(symbols))
    state, meta = loaded or read_state_dict(weights)
    name = model_name or meta.get("architecture")
    if not name:
        raise ConvformerError(f"{weights} does not say which model it holds; pass --model NAME")
    if "vocabulary" not in meta:
        raise ConvformerError(f"{weights} does not record its vocabulary (not saved by `convformer asr train`)")
    vocab = vocabulary_from_meta(meta["vocabulary"])
    model = create_model(name, vocab_size=len(vocab), **json.loads(meta.get("model_kwargs", "{}")))
    load_weights(model, state, metadata=meta, source_name=weights)
    model.narrowband = meta.get("narrowband", "keep")  # the front end it was trained with
    model.feature_norm = meta.get("feature_norm", "utterance")  # how its features were normalised in training
    model.feature_stats = meta.get("feature_stats")     # the training data's log-mel statistics (JSON), if known
    return model.eval(), vocab


def stream_chunk(stream, chunk_ms: float | None) -> int:
    """Feature frames per streaming step for ``chunk_ms`` (default: the smallest chunk the model allows)."""
    if chunk_ms is None:
        return stream.min_chunk()
    frames = int(round(chunk_ms / 10))
    if frames <= 0 or frames % stream.min_chunk():
        raise ConvformerError(f"--chunk-ms {chunk_ms:g}: use a multiple of {stream.min_chunk() * 10} ms for this "
                              "model (its subsampling times its attention chunk)")
    return frames


def pick_decoder(model, decoder: str = "auto") -> str:
    """The head that decodes: "ctc", or "rnnt" for a hybrid model; "auto" is rnnt where there is one."""
    hybrid = hasattr(model, "joint")
    chosen = ("rnnt" if hybrid else "ctc") if decoder == "auto" else decoder
    if chosen not in ("ctc", "rnnt") or (chosen == "rnnt" and not hybrid):
        raise ConvformerError(f"--decoder {decoder!r}: use ctc, auto, or rnnt with a hybrid model (conformer_hybrid_*)")
    if chosen == "ctc" and model.head is None:
        raise ConvformerError("--decoder ctc: this transducer has no CTC head; use rnnt (or auto)")
    return chosen


@torch.no_grad()
def decode_batch(model, vocab, feats, lengths, stream=None, chunk: int = 0, decoder: str = "auto") -> list[str]:
    """Greedy transcripts of a padded feature batch, offline or through the streaming encoder, by the CTC
    head or (hybrid models) the RNN-T head; streamed RNN-T decoding carries its state across chunks."""
    if pick_decoder(model, decoder) == "rnnt":
        if stream is None:
            tokens = model.transducer_decode(feats, lengths)
        else:
            greedy = GreedyTransducerDecoder(model.prediction, model.joint, feats.shape[0])
            for _, _, enc, valid, _ in stream.steps(feats, lengths, chunk):
                greedy.feed(enc, valid)
            tokens = greedy.tokens
        return [vocab.decode(t) for t in tokens]
    if stream is None:
        log_probs, out_lengths = model(feats, lengths)
    else:
        enc, out_lengths = stream.run(feats, lengths, chunk)
        log_probs = torch.log_softmax(model.head(enc), dim=-1)
    return [vocab.decode(t) for t in greedy_decode(log_probs, out_lengths, model.blank)]


@torch.no_grad()
def transcribe_stream(model, vocab, feats: torch.Tensor, chunk: int, stream, on_partial=None,
                      decoder: str = "auto") -> dict:
    """Stream one utterance's features (T, F) chunk by chunk. ``on_partial(seconds, text)`` is called whenever
    new tokens arrive. Returns the final text and per-step compute times (encoder and decoder)."""
    import time
    rnnt = pick_decoder(model, decoder) == "rnnt"
    decoder = GreedyTransducerDecoder(model.prediction, model.joint, 1) if rnnt else \
        StreamingGreedyDecoder(1, model.blank)
    total, pos, times = feats.shape[0], 0, []
    t0 = time.perf_counter()
    for _, _, enc, valid, _ in stream.steps(feats[None], None, chunk):
        gained = decoder.feed(enc, valid) if rnnt else decoder.push(torch.log_softmax(model.head(enc), dim=-1), valid)
        times.append(time.perf_counter() - t0)
        pos += chunk
        if gained[0] and on_partial is not None:
            on_partial(min(pos, total) / 100, vocab.decode(decoder.tokens[0]))
        t0 = time.perf_counter()
    return {"text": vocab.decode(decoder.tokens[0]), "step_seconds": times}
