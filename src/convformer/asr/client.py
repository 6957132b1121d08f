"""A live-recognition client: sends audio to ``asr serve`` as a microphone would, collects the results.

Used by ``convformer asr stream``, the tests and the load benchmark (``benchmarks/asr_serve_load.py``)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np

from convformer.errors import ConvformerError


async def stream_samples(url: str, samples: np.ndarray, realtime: bool = True, decoder: str = "auto",
                         block_ms: float = 100.0, on_event=None, start: dict | None = None,
                         send_end: bool = True) -> dict:
    """Send float samples (16 kHz) as 16-bit PCM in blocks of ``block_ms``, paced at 1x speed with
    ``realtime``; returns {"final": the final event or None, "partials": [...], "errors": [...],
    "ready": the ready event, "latencies": partial latencies in s measured here (send of the newest audio
    the text covers -> receipt)}."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1 - 1 / 32768) * 32768).astype("<i2")
    block = max(1, int(16000 * block_ms / 1000))
    out = {"final": None, "partials": [], "errors": [], "ready": None, "latencies": []}
    sent_at: list[tuple[float, float]] = []       # (seconds of audio sent so far, wall time)
    try:
        ws = await connect(url, max_size=2 ** 22, open_timeout=10)
    except OSError as err:
        raise ConvformerError(f"cannot reach {url} ({err}); is `convformer asr serve` running there?") from None
    async with ws:
        await ws.send(json.dumps(start or {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                                           "decoder": decoder}))

        async def receive():
            try:
                async for message in ws:
                    event = json.loads(message)
                    kind = event.get("type")
                    if kind == "ready":
                        out["ready"] = event
                    elif kind == "partial":
                        now = time.monotonic()
                        covered = [t for s, t in sent_at if s <= event["end"] + 1e-9]
                        if covered:
                            out["latencies"].append(now - covered[-1])
                        out["partials"].append(event)
                    elif kind == "final":
                        out["final"] = event
                    elif kind == "error":
                        out["errors"].append(event["message"])
                    if on_event is not None:
                        on_event(event)
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        t0 = time.monotonic()
        try:
            for i in range(0, len(pcm), block):
                if realtime:
                    wait = t0 + i / 16000 - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if receiver.done():
                    break
                await ws.send(pcm[i:i + block].tobytes())
                sent_at.append(((i + len(pcm[i:i + block])) / 16000, time.monotonic()))
            if send_end and not receiver.done():
                await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        await receiver
    return out


def start_server(*args: str, stderr=subprocess.PIPE) -> tuple[subprocess.Popen, int]:
    """``convformer asr serve --port 0 ARGS`` in a child process on a free port: (the process, its port).
    The tests and the load benchmark start their servers with it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "convformer", "asr", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    line = proc.stdout.readline()          # "port N" once it listens
    if not line.startswith("port "):
        proc.kill()
        why = proc.stderr.read() if stderr == subprocess.PIPE else ""
        raise ConvformerError(f"the server did not start: {line!r} {why}".strip())
    return proc, int(line.split()[1])


async def stream_file(url: str, path: str, **kwargs) -> dict:
    from convformer.asr.data import load_audio
    return await stream_samples(url, load_audio(path).numpy(), **kwargs)
