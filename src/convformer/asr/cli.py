"""`convformer asr`: train and evaluate streaming Conformer models (CTC, hybrid CTC/RNN-T, transducer),
transcribe audio files.

    convformer asr train [--model conformer_ctc_xs|conformer_hybrid_xs] [--data bundled|FOLDER] [--epochs 40]
    convformer asr eval [runs/<run>/best.safetensors] [--stream] [--decoder rnnt] [--output report.json]
    convformer asr transcribe speech.wav [--weights best.safetensors] [--stream --chunk-ms 320]

Without weights, eval and transcribe use the shipped model (asr/pretrained).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from convformer.asr.config import AsrTrainConfig
from convformer.errors import ConvformerError
from convformer.engine import options

app = typer.Typer(no_args_is_help=True, help="Speech recognition: train/evaluate CTC Conformers, transcribe.")


@app.command("train")
@options.uses_config(AsrTrainConfig)
def train_cmd(
    model: Optional[str] = typer.Option(None, help="Speech model [default: conformer_ctc_xs]."),
    data: Optional[str] = typer.Option(None, help="'bundled' (the espeak-ng corpus, data/speech) or a "
                                                  "folder with NeMo-style manifests."),
    train_manifest: Optional[str] = typer.Option(None, help="Training manifest(s) in the folder (or absolute), "
                                                            "comma-separated."),
    val_manifest: Optional[str] = typer.Option(None, help="Validation manifest(s) in the folder (or absolute), "
                                                          "comma-separated."),
    vocab: Optional[str] = typer.Option(None, help="'chars' or a SentencePiece .model file."),
    ctc_weight: Optional[float] = typer.Option(None, help="Hybrid models: weight of the CTC loss beside RNN-T's."),
    decoder: Optional[str] = typer.Option(None, help="Head that decodes in validation: ctc, rnnt (hybrid models) "
                                                     "or auto (rnnt where there is one)."),
    spec_augment: Optional[bool] = typer.Option(None, "--spec-augment/--no-spec-augment",
                                                help="SpecAugment on training features [default: on]."),
    speed_perturb: Optional[bool] = typer.Option(None, "--speed-perturb/--no-speed-perturb",
                                                 help="Play each training item at 0.9x, 1x or 1.1x speed [default: off]."),
    noise: Optional[float] = typer.Option(None, help="Probability of adding noise (10-30 dB SNR) to a training "
                                                     "item [default: 0]."),
    gain_db: Optional[float] = typer.Option(None, help="Random gain of up to this many dB either way (volume "
                                                       "perturbation) [default: 0]."),
    narrowband: Optional[str] = typer.Option(None, help="Audio recorded below 16 kHz: 'keep' its empty upper mel "
                                                        "bands or 'mask' them [default: keep]."),
    epochs: Optional[int] = typer.Option(None, help="Epochs [default: 40]."),
    batch_size: Optional[int] = typer.Option(None, help="Utterances per batch and process [default: 16]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: 2e-3]."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay [default: 1e-3]."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up epochs [default: 2]."),
    lr_schedule: Optional[str] = typer.Option(None, help="cosine, exponential (x --lr-decay per epoch) or constant."),
    lr_decay: Optional[float] = typer.Option(None, help="Per-epoch factor of the exponential schedule."),
    ema_decay: Optional[float] = typer.Option(None, help="Keep an EMA of the weights (e.g. 0.999)."),
    pretrained: Optional[str] = typer.Option(None, help="Weight file to start from (ours or NeMo's layout)."),
    min_lr: options.MinLr = None,
    accum_steps: options.AccumSteps = None,
    grad_clip: options.GradClip = None,
    precision: options.Precision = None,
    checkpoint_every: options.CheckpointEvery = None,
    resume: options.Resume = None,
    skip_nonfinite: options.SkipNonfinite = None,
    deterministic: options.Deterministic = None,
    tensorboard: options.Tensorboard = None,
    seed: options.Seed = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    device: options.Device = None,
    output: options.Output = None,
    name: options.Name = None,
    model_kwargs: Optional[str] = typer.Option(None, help='More model options as JSON, e.g. '
                                               '\'{"att_context": [[32, 7]]}\' for a single-latency model.'),
    config: options.Config = None,
    quiet: options.Quiet = False,
):
    """Train a CTC, hybrid CTC/RNN-T or transducer Conformer (SpecAugment, AdamW, cosine); run folder, resume and
    DDP as `convformer train`."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    flags["model_kwargs"] = options.json_mapping("--model-kwargs", model_kwargs)
    cfg, result = options.run_training_command(AsrTrainConfig, config, flags, quiet)
    if not result["main"] or result.get("val_cer") is None:
        return
    typer.echo(f"{cfg.model} on {cfg.data}: val CER {result['val_cer']:.2f}%, WER {result['val_wer']:.2f}% "
               f"(best CER {result['best_cer']:.2f}%, {result['val_count']} utterances) after {result['epochs']} "
               f"epochs in {result['seconds']:.0f}s")
    typer.echo(f"run folder: {result['folder']}")


def _streamer(net, context: Optional[str]):
    from convformer.asr.streaming import StreamingConformer
    if context:
        try:
            pair = tuple(int(v) for v in context.split(","))
        except ValueError:
            raise ConvformerError(f"--context takes LEFT,RIGHT (e.g. 32,3), not {context!r}") from None
        net.encoder.set_context(pair)
    return StreamingConformer(net.encoder)


@app.command("eval")
def eval_cmd(
    weights: Optional[str] = typer.Argument(None, help="Weight file from `asr train` (or a NeMo .nemo with "
                                                       "characters) [default: the shipped model]."),
    model: Optional[str] = typer.Option(None, help="Model name, if the file does not say."),
    data: str = typer.Option("bundled", help="'bundled' or a folder with the manifest."),
    manifest: str = typer.Option("test.jsonl", help="Manifest to score, inside the data folder."),
    stream: bool = typer.Option(False, "--stream", help="Also decode through the cache-aware streaming encoder."),
    chunk_ms: Optional[float] = typer.Option(None, help="Streaming chunk in ms [default: the context's smallest chunk: (right + 1) frames for chunked_limited, e.g. 320 ms at context 32,7 and 40 ms at 32,0 for conformer_ctc_xs]."),
    context: Optional[str] = typer.Option(None, help="Attention context LEFT,RIGHT of a multi-latency model [default: its first, e.g. 32,7 for conformer_ctc_xs]."),
    batch_size: int = typer.Option(32, help="Utterances per batch."),
    output: Optional[str] = typer.Option(None, help="Also write the scores and transcripts to this JSON file."),
    decoder: str = typer.Option("auto", help="Head that decodes: ctc, rnnt (hybrid models), or auto (rnnt where "
                                             "there is one)."),
):
    """CER and WER on a manifest, offline (and streaming, whose transcripts must be identical)."""
    import torch
    from convformer.asr.data import FrontendConfig, LogMelFrontend
    from convformer.asr.task import (Utterances, collate_utterances, decode_batch, load_asr, pick_decoder,
                                     read_manifest, resolve_data, stream_chunk)
    from convformer.asr.ctc import error_rates
    from convformer.fileio import atomic_write
    weights, net, vocab = _load(weights, model)
    pick_decoder(net, decoder)  # a wrong --decoder is an error before any audio is read
    streamer = _streamer(net, context) if stream or context else None
    chunk = stream_chunk(streamer, chunk_ms) if stream else 0
    folder = resolve_data(data)
    scored = folder / manifest
    if not scored.is_file() and Path(manifest).is_file():
        raise ConvformerError(f"manifest {manifest} is not in the data folder {folder} (it is in the current folder: "
                              f"pass --data FOLDER for the folder that holds it and its audio)")
    utts = Utterances(read_manifest(scored), vocab, LogMelFrontend(FrontendConfig()).eval(),
                      mask_narrowband=getattr(net, "narrowband", "keep") == "mask")
    typer.echo(f"scoring {scored} ({len(utts)} utterances) with the {pick_decoder(net, decoder)} head")
    loader = torch.utils.data.DataLoader(utts, batch_size=batch_size, collate_fn=collate_utterances)
    modes = ["offline"] + (["streaming"] if stream else [])
    hyps = {m: [] for m in modes}
    for feats, lengths, *_ in loader:
        hyps["offline"] += decode_batch(net, vocab, feats, lengths, decoder=decoder)
        if stream:
            hyps["streaming"] += decode_batch(net, vocab, feats, lengths, streamer, chunk, decoder=decoder)
    report = {"weights": weights, "manifest": str(scored), "decoder": pick_decoder(net, decoder),
              "context": list(net.encoder.att_context),
              "chunk_ms": chunk * 10 if stream else None}
    for m in modes:
        rates = error_rates(utts.texts, hyps[m])
        report[m] = {"cer": 100 * rates["cer"], "wer": 100 * rates["wer"], "utterances": rates["utterances"]}
        typer.echo(f"{m:<10} CER {100 * rates['cer']:6.2f}%  WER {100 * rates['wer']:6.2f}%  "
                   f"({rates['utterances']} utterances)")
    if stream:
        same = sum(a == b for a, b in zip(hyps["offline"], hyps["streaming"]))
        report["identical_transcripts"] = same
        typer.echo(f"streaming transcripts identical to offline: {same}/{len(utts)}")
    if output:
        report["transcripts"] = [{"ref": r, **{m: hyps[m][i] for m in modes}} for i, r in enumerate(utts.texts)]
        atomic_write(output, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
        typer.echo(f"wrote {output}")


def _load(weights: Optional[str], model: Optional[str]):
    """(weights path, model, vocabulary); without --weights the shipped model, said so once."""
    from convformer.asr.task import load_asr
    if weights is None:
        from convformer.asr.pretrained import shipped_card, shipped_weights
        weights = shipped_weights()
        card = shipped_card()
        measured = card.get("summary", "")
        typer.echo(f"using the shipped model {Path(weights).stem}" + (f" ({measured})" if measured else ""), err=True)
    return (weights, *load_asr(weights, model))


@app.command("transcribe")
def transcribe_cmd(
    audio: list[str] = typer.Argument(..., help="WAV/FLAC files (any sample rate; resampled to 16 kHz)."),
    weights: Optional[str] = typer.Option(None, help="Weight file from `asr train` (or a NeMo .nemo with "
                                                     "characters) [default: the shipped model, conformer_hybrid_xs "
                                                     "trained on the bundled synthetic voices]."),
    model: Optional[str] = typer.Option(None, help="Model name, if the file does not say."),
    stream: bool = typer.Option(False, "--stream", help="Feed the encoder chunk by chunk, printing partial "
                                                        "hypotheses as they arrive."),
    chunk_ms: Optional[float] = typer.Option(None, help="Streaming chunk in ms [default: the context's smallest chunk: (right + 1) frames for chunked_limited, e.g. 320 ms at context 32,7 and 40 ms at 32,0 for conformer_ctc_xs]."),
    context: Optional[str] = typer.Option(None, help="Attention context LEFT,RIGHT of a multi-latency model [default: its first, e.g. 32,7 for conformer_ctc_xs]."),
    decoder: str = typer.Option("auto", help="Head that decodes: ctc, rnnt (hybrid models), or auto (rnnt where "
                                             "there is one)."),
):
    """Print the transcript of each file (with --stream: partial hypotheses, latency and real-time factor)."""
    from convformer.asr.data import FrontendConfig, LogMelFrontend, load_audio
    from convformer.asr.task import decode_batch, load_asr, pick_decoder, stream_chunk, transcribe_stream
    weights, net, vocab = _load(weights, model)
    pick_decoder(net, decoder)
    frontend = LogMelFrontend(FrontendConfig()).eval()
    streamer = _streamer(net, context) if stream or context else None
    chunk = stream_chunk(streamer, chunk_ms) if stream else 0
    for path in audio:
        wave, limit = load_audio(path, frontend.cfg.sample_rate, with_limit=True)
        if limit is not None:
            masked = getattr(net, "narrowband", "keep") == "mask"
            typer.echo(f"{path}: recorded at {int(2 * limit)} Hz, resampled to {frontend.cfg.sample_rate} Hz; mel "
                       f"bands above {limit:.0f} Hz " + ("masked" if masked else "hold no speech"))
            limit = limit if masked else None
        feats, lengths = frontend(wave, band_limit_hz=limit)
        if not stream:
            typer.echo(f"{path}: {decode_batch(net, vocab, feats, lengths, decoder=decoder)[0]}")
            continue
        typer.echo(f"{path} (streaming, {chunk * 10} ms chunks, look-ahead "
                   f"{streamer.latency_frames * net.cfg.frame_ms:.0f} ms):")
        result = transcribe_stream(net, vocab, feats[0], chunk, streamer, decoder=decoder,
                                   on_partial=lambda t, text: typer.echo(f"  [{t:5.2f} s] {text}"))
        steps = result["step_seconds"]
        seconds = feats.shape[1] / 100
        typer.echo(f"  final: {result['text']}")
        typer.echo(f"  {len(steps)} steps, {1000 * sum(steps) / len(steps):.1f} ms mean / "
                   f"{1000 * max(steps):.1f} ms worst per step, real-time factor {sum(steps) / seconds:.3f}")
