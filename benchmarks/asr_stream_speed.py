"""Streaming Conformer speed: cache-based streaming against buffered streaming, interleaved, on this CPU.

    python benchmarks/asr_stream_speed.py [--models conformer_ctc_xs fastconformer_ctc_s] [--seconds 10]
                                          [--chunks 1 4] [--repeats 3] [--threads 2] [--nemo]

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


def run(models, seconds: float, chunks, repeats: int, threads: int | None, nemo: bool = False) -> dict:
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for name in models:
        model = convformer.create_model(name).eval()
        stream = StreamingConformer(model.encoder)
        feats = torch.randn(1, int(seconds * 100), model.cfg.feat_in)
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
                rows.append(dict(model=name, mode=mode, chunk_ms=chunk * 10, steps=len(times),
                                 rtf=sum(times) / (total_s if mode == "nemo" else audio_s),
                                 mean_ms=1000 * sum(times) / len(times),
                                 worst_ms=1000 * max(times), parity_streaming_vs_offline=parity,
                                 diff_vs_ours=nemo_diff if mode == "nemo" else buffered_diff,
                                 lookahead_ms=stream.latency_frames * model.cfg.frame_ms))
    return {"machine": machine_info(), "seconds": seconds, "results": rows}


def table(report: dict) -> str:
    lines = ["| model | mode | chunk ms | look-ahead ms | RTF | mean ms/chunk | worst ms | stream vs offline | "
             "vs ours (buffered: vs cache; nemo: vs offline) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['chunk_ms']} | {r['lookahead_ms']:.0f} | {r['rtf']:.3f} | "
                     f"{r['mean_ms']:.1f} | {r['worst_ms']:.1f} | {r['parity_streaming_vs_offline']:.1e} | "
                     f"{r['diff_vs_ours']:.1e} |")
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
