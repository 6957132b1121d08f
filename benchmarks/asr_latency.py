"""The cache-aware paper's latency comparisons at our scale: cache-aware streaming (a multi-latency model
and single-latency models) against buffered streaming of a full-context model, at three look-aheads.

    python benchmarks/asr_real_voices.py --arms ctc single_32_7 single_32_3 single_32_0 full_context \\
        --epochs 30 --keep runs/fsdd            # trains the five models on FSDD (same data, seed, budget)
    python benchmarks/asr_latency.py --runs runs/fsdd [--threads 1]

Every latency setting is a chunk of the cache-aware contexts: [32,7] streams 320 ms chunks, [32,3] 160 ms,
[32,0] 40 ms, each with 1.28 s of left context. Buffered streaming gets the same chunk and left context, so
it emits each chunk at the same moment (same algorithmic latency), and once more with a look-ahead of one
extra chunk (later by that chunk). Accuracy: CTC greedy transcripts of every recording of the held-out FSDD
speaker. Speed, with --threads (default 1) threads, on the bundled synthetic test sentences (longer than
FSDD's single words, so the left context is really used): milliseconds per step (mean and p95, decoding
included) and compute seconds per second of audio. Writes benchmarks/results/asr_latency.json (+ .md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from convformer.asr.ctc import error_rates, greedy_decode
from convformer.asr.data import FrontendConfig, LogMelFrontend
from convformer.asr.streaming import BufferedStreaming, StreamingConformer
from convformer.asr.task import BUNDLED, Utterances, collate_utterances, load_asr, read_manifest
from convformer.bench.measure import machine_info
from convformer.fileio import atomic_write

SETTINGS = ((32, 7), (32, 3), (32, 0))  # (left, right) of the cache-aware contexts; chunk = right + 1 frames


def features(manifest: Path, vocab, limit: int = 0):
    utts = Utterances(read_manifest(manifest)[:limit or None], vocab, LogMelFrontend(FrontendConfig()).eval())
    return [(f, t) for f, t in zip(utts.features, utts.texts)]


def decode(model, vocab, enc: torch.Tensor) -> str:
    log_probs = torch.log_softmax(model.head(enc), dim=-1)
    return vocab.decode(greedy_decode(log_probs, torch.tensor([enc.shape[1]]), model.blank)[0])


def cache_aware(model, context):
    stream = StreamingConformer(model.encoder, context)
    chunk = stream.min_chunk()

    def steps(feats):
        for _, _, enc, valid, _ in stream.steps(feats[None], None, chunk):
            yield enc[valid[:1].expand_as(valid)].view(1, -1, enc.shape[-1])
    return steps, chunk


def buffered(model, chunk: int, left: int, right: int):
    return BufferedStreaming(model.encoder, chunk, left, right).steps, chunk


@torch.no_grad()
def measure(model, vocab, steps, heldout, timing) -> dict:
    hyps = [decode(model, vocab, torch.cat(list(steps(f)), dim=1)) for f, _ in heldout]
    rates = error_rates([t for _, t in heldout], hyps)
    step_ms, compute, audio = [], 0.0, 0.0
    for feats, _ in timing:
        t0 = time.perf_counter()
        for enc in steps(feats):
            decode(model, vocab, enc)   # the head and the greedy decoder run every step, as they would live
            t1 = time.perf_counter()
            step_ms.append(1000 * (t1 - t0))
            t0 = t1
        audio += feats.shape[0] / 100
    compute = sum(step_ms) / 1000
    step_ms.sort()
    return {"cer": 100 * rates["cer"], "wer": 100 * rates["wer"], "utterances": rates["utterances"],
            "step_ms_mean": sum(step_ms) / len(step_ms), "step_ms_p95": step_ms[int(0.95 * (len(step_ms) - 1))],
            "compute_s_per_audio_s": compute / audio}


def run(runs: Path, heldout_manifest: Path, threads: int, timing_limit: int = 0, heldout_limit: int = 0) -> dict:
    torch.set_num_threads(threads)
    load = lambda arm: load_asr(str(runs / "runs" / f"{arm}_0" / "best.safetensors"))  # noqa: E731
    multi, vocab = load("ctc")
    full, _ = load("full_context")
    heldout = features(heldout_manifest, vocab, heldout_limit)
    timing = features(BUNDLED / "test.jsonl", vocab, timing_limit)
    rows = []
    offline = measure(full, vocab, lambda f: iter([full.encoder(f[None])[0]]), heldout, timing)
    rows.append({"setting": "offline", "system": "full-context model, whole utterance", "chunk_ms": None, **offline})
    for left, right in SETTINGS:
        chunk_frames = (right + 1) * multi.cfg.subsampling_factor        # feature frames per step
        left_frames = left * multi.cfg.subsampling_factor
        ms = chunk_frames * 10
        systems = [("cache-aware, multi-latency model", multi, cache_aware(multi, (left, right))),
                   ("cache-aware, single-latency model", load(f"single_{left}_{right}")[0],
                    None),
                   ("buffered full-context model", full, buffered(full, chunk_frames, left_frames, 0)),
                   (f"buffered full-context model, +{ms} ms look-ahead", full,
                    buffered(full, chunk_frames, left_frames, chunk_frames))]
        for name, model, steps in systems:
            steps = steps or cache_aware(model, (left, right))
            result = measure(model, vocab, steps[0], heldout, timing)
            rows.append({"setting": f"[{left},{right}]", "system": name, "chunk_ms": ms,
                         "emits_after_ms": ms + (ms if "look-ahead" in name else 0), **result})
    return {"machine": machine_info(), "settings": {"threads": threads, "runs": str(runs),
                                                    "heldout": str(heldout_manifest), "timing": "bundled test.jsonl",
                                                    "timing_limit": timing_limit}, "results": rows}


def markdown(report: dict) -> str:
    lines = ["| context | system | chunk (ms) | emits a chunk after (ms) | held-out CER / WER (%) | ms per step "
             "(mean / p95) | compute s per audio s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        chunk = "-" if r["chunk_ms"] is None else f"{r['chunk_ms']}"
        emits = "-" if r["chunk_ms"] is None else f"{r['emits_after_ms']}"
        lines.append(f"| {r['setting']} | {r['system']} | {chunk} | {emits} | {r['cer']:.1f} / {r['wer']:.1f} | "
                     f"{r['step_ms_mean']:.1f} / {r['step_ms_p95']:.1f} | {r['compute_s_per_audio_s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="The --keep folder of benchmarks/asr_real_voices.py.")
    parser.add_argument("--heldout", default=None, help="Held-out manifest [default: RUNS/manifests/heldout.jsonl].")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-limit", type=int, default=0, help="Time on the first N test sentences only.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "asr_latency.json"))
    args = parser.parse_args()
    runs = Path(args.runs)
    report = run(runs, Path(args.heldout or runs / "manifests" / "heldout.jsonl"), args.threads, args.timing_limit)
    out = Path(args.out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(report) + "\n"))
    print(markdown(report))


if __name__ == "__main__":
    main()
