"""Streaming Conformer speed: cache-based streaming against buffered streaming, interleaved, on this CPU.

    python benchmarks/asr_stream_speed.py [--models conformer_ctc_xs fastconformer_ctc_s conformer_hybrid_xs]
                                          [--seconds 10] [--chunks 1 4] [--repeats 3] [--threads 2] [--nemo]

Hybrid and transducer models add the decoders to the step: ``cache+ctc`` (the CTC head and its greedy
decoder) and ``cache+rnnt`` (the RNN-T greedy decoder, its state carried across steps), and with ``--nemo``
``nemo+rnnt``: NeMo's ``conformer_stream_step`` with its own greedy decoding carried across steps, whose
tokens must equal ours. ``conformer_hybrid_xs`` runs the shipped weights (asr/pretrained) when they exist,
and every model hears real speech (the bundled test sentences, end to end), so the decoders emit what
they would live; other models have random weights.

Cache-based: ``StreamingConformer.step`` computes each chunk once, reusing the caches. Buffered: every
step re-runs the offline encoder over all the audio its outputs can depend on (the receptive field, capped
at the start of the utterance) and keeps the new chunk's frames; both give the same frames, which the
script checks. With ``--nemo`` (NeMo installed: ``make test-nemo`` builds such an environment) NeMo's own
``cache_aware_stream_step`` runs the same weights at its default chunk (our smallest), checked against our
offline output. Per model and chunk size it reports the real-time factor (compute time / audio time) and
the mean and worst per-chunk latency. Random weights (speed does not depend on them), fp32, eval mode.
Writes benchmarks/results/asr_stream_speed.json (+ .md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import convformer
from convformer.bench.measure import machine_info
from convformer.asr.streaming import StreamingConformer


def buffered_window(stream: StreamingConformer) -> int:
    """Feature frames a chunk's outputs can depend on, beyond the chunk itself (all layers' left context)."""
    cfg = stream.encoder.cfg
    per_layer = stream.cache_frames + cfg.conv_kernel - 1
    return (per_layer * cfg.n_layers + 2) * stream.factor


def time_streams(stream: StreamingConformer, feats: torch.Tensor, chunk: int):
    """Run both streaming modes over one utterance; returns per-step seconds of each and the max diff."""
    enc = stream.encoder
    state = stream.initial_state(1)
    window = buffered_window(stream)
    total = feats.shape[1]
    cached_t, buffered_t, diff = [], [], 0.0
    align = stream.min_chunk()
    with torch.no_grad():
        for start in range(0, total - chunk + 1, chunk):
            piece = feats[:, start:start + chunk]
            t0 = time.perf_counter()
            frames, valid, state = stream.step(piece, state)
            cached_t.append(time.perf_counter() - t0)
            lo = max(0, start - window) // align * align
            t0 = time.perf_counter()
            out, _ = enc(feats[:, lo:start + chunk])
            buffered_t.append(time.perf_counter() - t0)
            if stream.lag == 0:  # no lag: this step's frames are the window's last (the very last
                n = chunk // stream.factor  # offline frame leans on padding past the window's end)
                diff = max(diff, (out[:, -n - 1:-1] - frames[:, :n]).abs().max().item())
    return cached_t, buffered_t, diff


def speech_features(seconds: float) -> torch.Tensor:
    """(1, frames, 80) log-mels of the bundled test sentences, one after another, cut to ``seconds``."""
    from convformer.asr.data import CharVocabulary, FrontendConfig, LogMelFrontend
    from convformer.asr.task import BUNDLED, Utterances, read_manifest
    entries = read_manifest(BUNDLED / "test.jsonl")
    need, picked = int(seconds * 100), []
    while sum(e.get("duration", 1.0) for e in picked) * 100 < need + 100:
        picked.append(entries[len(picked) % len(entries)])
    utts = Utterances(picked, CharVocabulary(), LogMelFrontend(FrontendConfig()).eval())
    return torch.cat(utts.features)[None, :need]


def load_model(name: str):
    """The shipped weights for conformer_hybrid_xs where they exist, random weights otherwise."""
    from convformer.asr.pretrained import SHIPPED
    if name == "conformer_hybrid_xs" and SHIPPED.is_file():
        from convformer.asr.task import load_asr
        return load_asr(str(SHIPPED))[0].eval(), "shipped"
    return convformer.create_model(name).eval(), "random"


def time_decoders(model, stream: StreamingConformer, feats: torch.Tensor, chunk: int):
    """Per-step seconds of the cache-aware step plus each decoder the model has, and the RNN-T tokens."""
    from convformer.asr.ctc import StreamingGreedyDecoder
    from convformer.asr.transducer import GreedyTransducerDecoder
    out = {}
    heads = (["ctc"] if model.head is not None else []) + ["rnnt"]
    for head in heads:
        decoder = GreedyTransducerDecoder(model.prediction, model.joint, 1) if head == "rnnt" else \
            StreamingGreedyDecoder(1, model.blank)
        times, state, total = [], stream.initial_state(1), feats.shape[1]
        with torch.no_grad():
            for start in range(0, total, chunk):
                piece = feats[:, start:start + chunk]
                n = torch.tensor([piece.shape[1]])
                if piece.shape[1] < chunk:
                    piece = torch.cat([piece, piece.new_zeros(1, chunk - piece.shape[1], piece.shape[2])], 1)
                t0 = time.perf_counter()
                frames, valid, state = stream.step(piece, state, n)
                if head == "rnnt":
                    decoder.feed(frames, valid)
                else:
                    decoder.push(torch.log_softmax(model.head(frames), dim=-1), valid)
                times.append(time.perf_counter() - t0)
        out[head] = (times, decoder.tokens[0])
    return out


def run(models, seconds: float, chunks, repeats: int, threads: int | None, nemo: bool = False) -> dict:
    if threads:
        torch.set_num_threads(threads)
    rows = []
    speech = None
    for name in models:
        model, weights = load_model(name)
        stream = StreamingConformer(model.encoder)
        speech = speech_features(seconds) if speech is None else speech
        feats = speech[:, :, :model.cfg.feat_in]
        with torch.no_grad():
            offline, _ = model.encoder(feats)
            streamed, _ = stream.run(feats, None, stream.min_chunk())
        parity = (offline - streamed).abs().max().item()
        for mult in chunks:
            chunk = stream.min_chunk() * mult
            best, buffered_diff, nemo_diff = None, 0.0, None
            total_s = feats.shape[1] / 100
            for _ in range(repeats):  # interleaved: both modes every step of every repeat
                cached, buffered, buffered_diff = time_streams(stream, feats, chunk)
                if best is None or sum(cached) + sum(buffered) < sum(best[0]) + sum(best[1]):
                    best = (cached, buffered)
            audio_s = len(best[0]) * chunk / 100
            modes = [("cache", best[0]), ("buffered", best[1])]
            tokens = {}
            if hasattr(model, "joint"):
                decoded = min((time_decoders(model, stream, feats, chunk) for _ in range(repeats)),
                              key=lambda d: sum(sum(t) for t, _ in d.values()))
                modes += [(f"cache+{head}", times) for head, (times, _) in decoded.items()]
                tokens = {head: toks for head, (_, toks) in decoded.items()}
                if nemo and mult == 1:
                    from convformer.asr.data import CharVocabulary
                    from convformer.asr.nemo_reference import build_nemo_model, nemo_transducer_stream
                    peer = build_nemo_model(model, CharVocabulary().symbols)
                    runs = [nemo_transducer_stream(peer, feats.transpose(1, 2)) for _ in range(repeats)]
                    nemo_tokens, nemo_times = min(runs, key=lambda r: sum(r[1]))
                    modes.append(("nemo+rnnt", nemo_times))
                    tokens["nemo+rnnt"] = nemo_tokens
            if nemo and mult == 1:
                from convformer.asr.nemo_reference import build_nemo_encoder, nemo_cache_aware_stream
                peer = build_nemo_encoder(model)
                runs = []
                for _ in range(repeats):
                    out, times = nemo_cache_aware_stream(peer, feats.transpose(1, 2))
                    runs.append(times)
                n = min(out.shape[1], offline.shape[1])
                nemo_diff = (out[:, :n] - offline[:, :n]).abs().max().item()
                modes.append(("nemo", min(runs, key=sum)))
            for mode, times in modes:
                same, count = None, None
                if mode == "cache+rnnt":   # streamed RNN-T tokens against offline decoding
                    count = len(tokens["rnnt"])
                    same = tokens["rnnt"] == model.transducer_decode(feats)[0]
                elif mode == "nemo+rnnt":  # NeMo's streamed tokens against ours
                    count, same = len(tokens["nemo+rnnt"]), tokens["nemo+rnnt"] == tokens["rnnt"]
                elif mode == "cache+ctc":
                    count = len(tokens["ctc"])
                rows.append(dict(model=name, weights=weights, mode=mode, chunk_ms=chunk * 10, steps=len(times),
                                 tokens=count, same_tokens=same,
                                 rtf=sum(times) / (total_s if mode.startswith(("nemo", "cache+")) else audio_s),
                                 mean_ms=1000 * sum(times) / len(times),
                                 worst_ms=1000 * max(times), parity_streaming_vs_offline=parity,
                                 diff_vs_ours=nemo_diff if mode == "nemo" else buffered_diff,
                                 lookahead_ms=stream.latency_frames * model.cfg.frame_ms))
    return {"machine": machine_info(), "seconds": seconds, "results": rows}


def table(report: dict) -> str:
    lines = ["| model | weights | mode | chunk ms | look-ahead ms | RTF | mean ms/chunk | worst ms | stream vs offline | "
             "vs ours (buffered: vs cache; nemo: vs offline) | tokens (cache+rnnt: same as offline; nemo: same as ours) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        diff = "" if r["diff_vs_ours"] is None or r["mode"].endswith("rnnt") or r["mode"] == "cache+ctc" \
            else f"{r['diff_vs_ours']:.1e}"
        toks = "" if r.get("tokens") is None else f"{r['tokens']}" + (
            "" if r.get("same_tokens") is None else f" ({'yes' if r['same_tokens'] else 'NO'})")
        lines.append(f"| {r['model']} | {r.get('weights', 'random')} | {r['mode']} | {r['chunk_ms']} | "
                     f"{r['lookahead_ms']:.0f} | {r['rtf']:.3f} | {r['mean_ms']:.1f} | {r['worst_ms']:.1f} | "
                     f"{r['parity_streaming_vs_offline']:.1e} | {diff} | {toks} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["conformer_ctc_xs", "fastconformer_ctc_s"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--chunks", nargs="+", type=int, default=[1, 4], help="chunk sizes in multiples of the minimum")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--nemo", action="store_true", help="add NeMo's cache_aware_stream_step (NeMo must be installed)")
    p.add_argument("--output", default=str(Path(__file__).parent / "results" / "asr_stream_speed.json"))
    args = p.parse_args(argv)
    report = run(args.models, args.seconds, args.chunks, args.repeats, args.threads, args.nemo)
    md = table(report)
    print(md)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    out.with_suffix(".md").write_text(md + "\n")
    return report


if __name__ == "__main__":
    main()
