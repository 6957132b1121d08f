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
    pad_silence: Optional[float] = typer.Option(None, help="Up to this many seconds of silence (digital or a "
                                                           "quiet noise floor) before and after each training "
                                                           "item, for live audio [default: 0]."),
    normalize: Optional[str] = typer.Option(None, help="Log-mel normalisation: utterance (per utterance, offline "
                                                       "only), fixed or running (causal: what live recognition "
                                                       "streams with) [default: utterance]."),
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
    from convformer.asr.task import (Utterances, collate_utterances, decode_batch, load_asr, pick_decoder,
                                     read_manifest, resolve_data, stream_chunk)
    from convformer.asr.ctc import error_rates
    from convformer.asr.live_frontend import frontend_for
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
    utts = Utterances(read_manifest(scored), vocab, frontend_for(net),
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
    rate: int = typer.Option(16000, help="Sample rate of raw PCM read from stdin (`-`)."),
    realtime: bool = typer.Option(False, "--realtime", help="Play each file at 1x speed through the live path, "
                                                            "printing partial results as they would appear."),
    normalize: Optional[str] = typer.Option(None, help="Live path (`-`, --realtime): causal feature normalisation, "
                                                       "fixed or running [default: the model's own, else fixed]."),
):
    """Print the transcript of each file (with --stream: partial hypotheses, latency and real-time factor).
    `-` reads raw 16-bit PCM from stdin and recognises it live; --realtime plays files at 1x speed through
    the live path."""
    from convformer.asr.data import load_audio
    from convformer.asr.task import decode_batch, load_asr, pick_decoder, stream_chunk, transcribe_stream
    if rate <= 0:
        raise ConvformerError(f"--rate must be a positive sample rate in Hz, got {rate}")
    if normalize is not None and normalize not in ("fixed", "running"):
        raise ConvformerError(f"--normalize {normalize!r}: use fixed or running (live audio needs a causal one)")
    weights, net, vocab = _load(weights, model)
    pick_decoder(net, decoder)
    if "-" in audio or realtime:
        if audio.count("-") > 1 or ("-" in audio and len(audio) > 1):
            raise ConvformerError("`-` (stdin) must be the only input")
        return _transcribe_live(net, vocab, audio, rate, realtime, normalize, chunk_ms, context, decoder)
    from convformer.asr.live_frontend import frontend_for
    frontend = frontend_for(net)
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


def _live_recognizer(net, vocab, normalize, chunk_ms, context, decoder, **limits):
    from convformer.asr.live import LiveRecognizer
    from convformer.asr.live_frontend import model_norm
    from convformer.asr.task import stream_chunk
    streamer = _streamer(net, context)
    return LiveRecognizer(net, vocab, model_norm(net, normalize), stream_chunk(streamer, chunk_ms), decoder, **limits)


def _stdin_blocks(rate: int, block: int = 3200):
    """Float samples at 16 kHz from raw 16-bit little-endian PCM on stdin, as it arrives."""
    import sys
    import numpy as np
    stdin = sys.stdin.buffer
    if rate != 16000:   # resampling is done on the whole input (not live)
        from convformer.asr.data import resample
        data = stdin.read()
        data = data[:len(data) - len(data) % 2]
        typer.echo(f"note: {rate} Hz input is resampled to 16000 Hz after the whole input is read", err=True)
        yield resample(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, rate, 16000)
        return
    carry = b""
    while True:
        data = stdin.read1(2 * block) if hasattr(stdin, "read1") else stdin.read(2 * block)
        if not data:
            break
        data = carry + data
        cut = len(data) - len(data) % 2
        carry = data[cut:]
        if cut:
            yield np.frombuffer(data[:cut], "<i2").astype(np.float32) / 32768.0


def _file_blocks(path: str, realtime: bool, block: int = 320):
    """A file's samples at 16 kHz in 20 ms blocks, paced at 1x speed with ``realtime``."""
    import time
    from convformer.asr.data import load_audio
    wave = load_audio(path).numpy()
    t0 = time.monotonic()
    for i in range(0, len(wave), block):
        if realtime:
            wait = t0 + i / 16000 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield wave[i:i + block]


def _transcribe_live(net, vocab, audio, rate, realtime, normalize, chunk_ms, context, decoder):
    import time
    live = _live_recognizer(net, vocab, normalize, chunk_ms, context, decoder, max_seconds=float("inf"),
                            max_backlog_seconds=float("inf"))
    typer.echo(f"live: {live.chunk * 10} ms steps, {live.norm.mode} normalisation, {live.decoder} head", err=True)
    for path in audio:
        blocks = _stdin_blocks(rate) if path == "-" else _file_blocks(path, realtime)
        name = "stdin" if path == "-" else path
        live.open(name)
        t0 = time.monotonic()

        def show(events):
            for e in events:
                typer.echo(f"  [{time.monotonic() - t0:6.2f} s] {e['text']}" if e["type"] == "partial" else
                           f"{name}: {e['text']}")
        for samples in blocks:
            live.feed(name, samples)
            show(live.drain())
        live.end(name)
        show(live.drain())   # the last partials, then the final


@app.command("serve")
def serve_cmd(
    weights: Optional[str] = typer.Option(None, help="Weight file from `asr train` [default: the shipped model]."),
    model: Optional[str] = typer.Option(None, help="Model name, if the file does not say."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8765, help="Port (0: any free port; the one chosen is printed)."),
    max_streams: int = typer.Option(64, help="Streams open at once; one more is refused with a message."),
    max_seconds: float = typer.Option(300.0, help="Longest utterance in seconds; longer audio is refused (the "
                                                  "result so far is still sent)."),
    max_backlog: float = typer.Option(5.0, help="Seconds of audio a stream may wait for the model before it is "
                                                "refused (back-pressure when the machine cannot keep up)."),
    idle_seconds: float = typer.Option(30.0, help="A client that sends nothing for this long is closed."),
    chunk_ms: Optional[float] = typer.Option(None, help="Streaming step in ms [default: the model's smallest]."),
    context: Optional[str] = typer.Option(None, help="Attention context LEFT,RIGHT of a multi-latency model."),
    normalize: Optional[str] = typer.Option(None, help="Causal feature normalisation: fixed or running "
                                                       "[default: the model's own, else fixed]."),
    naive: bool = typer.Option(False, "--naive", help="One model call per stream per step instead of one "
                                                      "batched call (to measure against)."),
    threads: Optional[int] = typer.Option(None, help="Torch threads for the model [default: torch's]."),
):
    """Serve live recognition over WebSocket (protocol: docs/asr.md), and a page that listens at /."""
    import asyncio
    import torch
    from convformer.asr.serve import LiveServer, require_websockets
    require_websockets()
    for flag, value in (("--max-streams", max_streams), ("--max-seconds", max_seconds),
                        ("--max-backlog", max_backlog), ("--idle-seconds", idle_seconds)):
        if value <= 0:
            raise ConvformerError(f"{flag} must be positive, got {value:g}")
    if not 0 <= port <= 65535:
        raise ConvformerError(f"--port must be within 0..65535, got {port}")
    if threads is not None:
        if threads <= 0:
            raise ConvformerError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    weights, net, vocab = _load(weights, model)
    decoders = (("rnnt",) if hasattr(net, "joint") else ()) + (("ctc",) if net.head is not None else ())

    def make(decoder):
        return _live_recognizer(net, vocab, normalize, chunk_ms, context, decoder, max_streams=max_streams,
                                max_seconds=max_seconds, max_backlog_seconds=max_backlog, batched=not naive)

    server = LiveServer(make, decoders, max_streams=max_streams, idle_seconds=idle_seconds)
    first = server.recognizer("auto")   # built now: a bad --chunk-ms or --normalize is refused before serving

    def ready(bound):
        typer.echo(f"serving {Path(weights).stem} on ws://{host}:{bound}/ (page: http://{host}:{bound}/); "
                   f"{first.chunk * 10} ms steps, {first.norm.mode} normalisation, heads {', '.join(decoders)}, "
                   f"{'naive' if naive else 'batched'}", err=True)
        typer.echo(f"port {bound}")
        import sys
        sys.stdout.flush()

    try:
        asyncio.run(server.run(host, port, ready))
    except OSError as err:   # the address is taken, or not this machine's
        raise ConvformerError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port or "
                              "--host") from None
    typer.echo(f"stopped after {server.served} streams", err=True)


@app.command("stream")
def stream_cmd(
    audio: str = typer.Argument(..., help="WAV/FLAC file to send (resampled to 16 kHz)."),
    url: str = typer.Option("ws://127.0.0.1:8765/", help="The server's WebSocket address."),
    realtime: bool = typer.Option(True, "--realtime/--fast", help="Send at 1x speed [default] or as fast as "
                                                                   "the server takes it."),
    decoder: str = typer.Option("auto", help="Head to decode with: auto, ctc or rnnt."),
    block_ms: float = typer.Option(100.0, help="Audio per message in ms."),
):
    """Send a file to `asr serve` as a live client would, printing partial results and the final one."""
    import asyncio
    from convformer.asr.client import stream_file
    from convformer.asr.serve import require_websockets
    require_websockets()
    if block_ms <= 0:
        raise ConvformerError(f"--block-ms must be positive, got {block_ms:g}")

    def show(event):
        if event["type"] == "partial":
            typer.echo(f"  [{event['end']:6.2f} s audio, {1000 * event['latency']:5.0f} ms] {event['text']}")
        elif event["type"] == "error":
            typer.echo(f"server: {event['message']}", err=True)

    result = asyncio.run(stream_file(url, audio, realtime=realtime, decoder=decoder, block_ms=block_ms,
                                     on_event=show))
    if result.get("final") is None:
        raise ConvformerError("the server closed the stream without a final result"
                              + (f": {result['errors'][-1]}" if result["errors"] else ""))
    typer.echo(f"{audio}: {result['final']['text']}")
