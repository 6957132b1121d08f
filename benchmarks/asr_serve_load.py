"""Load test of `convformer asr serve`: N concurrent real-time streams on loopback, batched against naive.

    python benchmarks/asr_serve_load.py [--streams 1 8 32 64] [--seconds 8] [--modes batched naive]

For each mode (the batched server, and ``--naive``: one model call per stream per chunk) a server is started
on 127.0.0.1 (a free port); for each N, N clients each send their own audio (bundled test utterances,
end to end, ``--seconds`` long) at 1x speed, starting within the first second, then the end message.
Reported per N: the server's real-time factor (model compute seconds per second of audio, over all
streams), partial-result latency p50/p95/p99 (from sending the newest audio a partial covers to receiving
it, measured by the client), the server's CPU use (cores, from /proc), errors, and whether every final
transcript equals offline decoding of the same audio with the same front end. N "stays real time" when
there is no error, every transcript is exact and p95 latency is under ``--max-latency`` seconds. Once a
mode fails at some N, its larger N are not run (they could only fail slower). Bounded: each N ends within
``--seconds`` + 60 s.

Prints the table and writes benchmarks/results/asr_serve_load.json (and .md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from convformer.asr.client import start_server, stream_samples
from convformer.asr.data import load_audio
from convformer.asr.live_frontend import CausalLogMel, model_norm
from convformer.asr.pretrained import SHIPPED
from convformer.asr.task import BUNDLED, decode_batch, load_asr
from convformer.fileio import atomic_write

RESULTS = Path(__file__).parent / "results"


def corpus_streams(n: int, seconds: float) -> list[np.ndarray]:
    """n different int16-exact waveforms of about ``seconds``, each the bundled test utterances end to end
    from its own starting point."""
    waves = [load_audio(p).numpy() for p in sorted((BUNDLED / "test").glob("*.flac"))]
    out = []
    for i in range(n):
        parts, total, j = [], 0, (7 * i) % len(waves)
        while total < seconds * 16000:
            parts.append(waves[j % len(waves)])
            total += len(parts[-1])
            j += 1
        audio = np.concatenate(parts)[:int(seconds * 16000)]
        out.append((np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2").astype(np.float32) / 32768.0)
    return out


def offline_transcripts(weights: str, audios: list[np.ndarray]) -> list[str]:
    model, vocab = load_asr(weights)
    frontend = CausalLogMel(model_norm(model))
    out = []
    for a in audios:
        feats, n = frontend(torch.from_numpy(a))
        out.append(decode_batch(model, vocab, feats, torch.tensor([int(n)]))[0])
    return out


class ServerProcess:
    def __init__(self, weights: str | None, naive: bool, threads: int, max_streams: int):
        args = ["--threads", str(threads), "--max-streams", str(max_streams), "--max-backlog", "60",
                "--idle-seconds", "120"]
        args += (["--weights", weights] if weights else []) + (["--naive"] if naive else [])
        self.proc, self.port = start_server(*args, stderr=subprocess.DEVNULL)
        self.url = f"ws://127.0.0.1:{self.port}/"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _clients(url: str, audios: list[np.ndarray], seconds: float) -> list[dict]:
    rng = np.random.default_rng(0)

    async def one(a, delay):
        await asyncio.sleep(delay)
        return await stream_samples(url, a, realtime=True, block_ms=100)

    tasks = [asyncio.wait_for(one(a, float(rng.uniform(0, 1))), seconds + 60) for a in audios]
    return await asyncio.gather(*tasks, return_exceptions=True)


def run_level(server: ServerProcess, audios, refs, seconds: float, max_latency: float) -> dict:
    before, cpu0, t0 = server.stats(), server.cpu_seconds(), time.monotonic()
    results = asyncio.run(_clients(server.url, audios, seconds))
    wall, cpu1, after = time.monotonic() - t0, server.cpu_seconds(), server.stats()
    timeouts = sum(isinstance(r, BaseException) for r in results)
    done = [r for r in results if not isinstance(r, BaseException)]
    lat = np.array([x for r in done for x in r["latencies"]]) if done else np.array([])
    errors = [e for r in done for e in r["errors"]]
    exact = sum(1 for r, ref in zip(results, refs) if not isinstance(r, BaseException) and r["final"] is not None
                and r["final"]["text"] == ref)
    audio_seconds = sum(len(a) for a in audios) / 16000
    row = {"streams": len(audios), "audio_seconds": audio_seconds, "wall_seconds": wall,
           "rtf": (after["compute_seconds"] - before["compute_seconds"]) / audio_seconds,
           "cpu_cores": (cpu1 - cpu0) / wall,
           "ticks": after["ticks"] - before["ticks"], "model_calls": after["model_calls"] - before["model_calls"],
           "latency_p50": float(np.percentile(lat, 50)) if lat.size else None,
           "latency_p95": float(np.percentile(lat, 95)) if lat.size else None,
           "latency_p99": float(np.percentile(lat, 99)) if lat.size else None,
           "errors": len(errors), "timeouts": timeouts, "exact": exact, "first_error": errors[0] if errors else None}
    row["mean_batch"] = (after["stream_steps"] - before["stream_steps"]) / max(row["ticks"], 1)
    row["real_time"] = bool(not errors and not timeouts and exact == len(audios) and row["latency_p95"] is not None
                            and row["latency_p95"] < max_latency)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per stream")
    parser.add_argument("--modes", nargs="+", default=["batched", "naive"], choices=["batched", "naive"])
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--weights", default=None, help="weight file [default: the shipped model]")
    parser.add_argument("--max-latency", type=float, default=1.0, help="p95 partial latency that counts as real time")
    parser.add_argument("--output", default=str(RESULTS / "asr_serve_load.json"))
    args = parser.parse_args(argv)
    audios = corpus_streams(max(args.streams), args.seconds)
    refs = offline_transcripts(args.weights or str(SHIPPED), audios)
    report = {"settings": {**vars(args), "cpu_count": os.cpu_count(), "torch": torch.__version__}, "rows": []}
    for mode in args.modes:
        server = ServerProcess(args.weights, mode == "naive", args.threads, max(args.streams) + 1)
        try:
            failed = False
            for n in sorted(args.streams):
                if failed:
                    report["rows"].append({"mode": mode, "streams": n, "skipped": "a smaller N already fell behind"})
                    continue
                print(f"... {mode}: {n} streams", flush=True)
                row = {"mode": mode, **run_level(server, audios[:n], refs[:n], args.seconds, args.max_latency)}
                report["rows"].append(row)
                failed = not row["real_time"]
        finally:
            server.stop()
    best = {m: max([r["streams"] for r in report["rows"] if r["mode"] == m and r.get("real_time")], default=0)
            for m in args.modes}
    report["largest_real_time"] = best
    if "batched" in best and "naive" in best:
        report["batched_over_naive"] = best["batched"] / best["naive"] if best["naive"] else None
    text = format_table(report)
    print(text)
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    md = args.output[:-5] + ".md"
    atomic_write(md, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(f"wrote {args.output} and {md}")
    return report


def format_table(report: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{1000 * v:.0f}"
    lines = ["| mode | streams | real time | RTF | latency p50 / p95 / p99 ms | server CPU (cores) | streams per "
             "tick | exact finals | errors |", "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['mode']} | {r['streams']} | not run ({r['skipped']}) | | | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['streams']} | {'yes' if r['real_time'] else 'no'} | {r['rtf']:.3f} | "
                     f"{ms(r['latency_p50'])} / {ms(r['latency_p95'])} / {ms(r['latency_p99'])} | "
                     f"{r['cpu_cores']:.2f} | {r['mean_batch']:.1f} | {r['exact']}/{r['streams']} | "
                     f"{r['errors'] + r['timeouts']} |")
    best = report["largest_real_time"]
    lines.append("")
    lines.append("largest N that stays real time: " + ", ".join(f"{m} {n}" for m, n in best.items()))
    if report.get("batched_over_naive") is not None:
        lines.append(f"batched / naive: {report['batched_over_naive']:.1f}x the real-time streams (target >= 4x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
