"""``convformer asr serve``: live recognition over WebSocket, every stream stepped together.

Protocol (one utterance per connection; JSON text messages, audio as binary messages):

* client -> server, first: ``{"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le" | "f32le",
  "decoder": "auto" | "ctc" | "rnnt"}`` (``decoder`` optional);
* server -> client: ``{"type": "ready", "stream": ID, "chunk_ms": ..., "decoder": ...}``;
* client -> server: binary messages of little-endian samples, any length (whole samples);
* server -> client, as the text changes: ``{"type": "partial", "text": ..., "end": seconds of audio the
  text covers, "latency": seconds from the audio's arrival to this message}``;
* client -> server: ``{"type": "end"}``; the server flushes the audio and answers ``{"type": "final",
  "text": ..., "end": ..., "seconds": audio length}``, then closes the connection;
* server -> client on any problem: ``{"type": "error", "message": ...}``: one line naming the problem and
  what to do. Problems of one stream never touch another.

One worker runs the model: each tick it takes every stream with a chunk of audio ready, runs one batched
cache-aware step for all of them in a thread (so the event loop keeps receiving audio), and sends the new
text. ``GET /`` serves a page that streams the microphone (``asr/web/live.html``).

On SIGTERM/SIGINT the server stops accepting streams, ends every open stream as if its client had sent
the end message, delivers every final result, then exits.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import signal
from http import HTTPStatus
from importlib import resources

import numpy as np

from convformer.asr.live import LiveError, LiveRecognizer
from convformer.errors import ConvformerError

RATE = 16000
ENCODINGS = {"pcm_s16le": (np.dtype("<i2"), 1 / 32768.0), "f32le": (np.dtype("<f4"), 1.0)}


def require_websockets():
    try:
        import websockets  # noqa: F401
    except ImportError:
        raise ConvformerError("live recognition needs the websockets package: pip install 'convformer[serve]'") \
            from None


def parse_start(message) -> dict:
    """The start message, checked: {"sample_rate", "encoding", "decoder"}; a LiveError names what is wrong."""
    if isinstance(message, (bytes, bytearray)):
        raise LiveError("expected a JSON start message first, got audio bytes; send {\"type\": \"start\", "
                        "\"sample_rate\": 16000, \"encoding\": \"pcm_s16le\"} before the audio")
    try:
        start = json.loads(message)
    except ValueError:
        raise LiveError(f"the start message is not JSON ({message[:40]!r}); send {{\"type\": \"start\", "
                        "\"sample_rate\": 16000, \"encoding\": \"pcm_s16le\"}") from None
    if not isinstance(start, dict) or start.get("type") != "start":
        raise LiveError("expected a start message first ({\"type\": \"start\", ...}), got "
                        f"{json.dumps(start)[:60]}")
    rate = start.get("sample_rate")
    if rate != RATE:
        raise LiveError(f"sample rate {rate!r} is not supported: send {RATE} Hz mono audio (resample on the "
                        "client; a browser's AudioContext can be opened at 16000 Hz)")
    encoding = start.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise LiveError(f"encoding {encoding!r} is not supported: use one of {', '.join(ENCODINGS)}")
    return {"sample_rate": rate, "encoding": encoding, "decoder": start.get("decoder", "auto")}


def decode_audio(data: bytes, encoding: str) -> np.ndarray:
    dtype, scale = ENCODINGS[encoding]
    if len(data) % dtype.itemsize:
        raise LiveError(f"an audio message of {len(data)} bytes is not whole {encoding} samples "
                        f"({dtype.itemsize} bytes each)")
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32) * scale
    if not np.isfinite(samples).all():
        raise LiveError("the audio holds NaN or infinite samples; send finite samples in [-1, 1]")
    return samples


class LiveServer:
    """The WebSocket front of one or two :class:`LiveRecognizer` (a hybrid model's heads each get one)."""

    def __init__(self, make_recognizer, decoders: tuple, max_streams: int = 64, idle_seconds: float = 30.0,
                 log=print):
        self.make_recognizer, self.decoders = make_recognizer, decoders
        self.recognizers: dict[str, LiveRecognizer] = {}
        self.max_streams, self.idle_seconds, self.log = max_streams, idle_seconds, log
        self.outboxes: dict[object, asyncio.Queue] = {}
        self.ids = itertools.count(1)
        self.wake: asyncio.Event | None = None
        self.draining = False
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convformer-asr")
        self.load = 0.0          # smoothed compute time per tick / audio time per tick
        self.served = 0

    def recognizer(self, decoder: str) -> LiveRecognizer:
        chosen = self.decoders[0] if decoder == "auto" else decoder
        if chosen not in self.decoders:
            raise LiveError(f"decoder {decoder!r} is not offered by this model: use " +
                            ", ".join(("auto",) + self.decoders))
        if chosen not in self.recognizers:
            self.recognizers[chosen] = self.make_recognizer(chosen)
        return self.recognizers[chosen]

    @property
    def open_streams(self) -> int:
        return sum(len(r.streams) for r in self.recognizers.values())

    # ---- connections ----------------------------------------------------------------------------------
    async def handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed
        sid, rec, outbox, sender = None, None, asyncio.Queue(), None
        try:
            try:
                first = await asyncio.wait_for(ws.recv(), self.idle_seconds)
            except asyncio.TimeoutError:
                raise LiveError(f"no start message within {self.idle_seconds:g} s") from None
            start = parse_start(first)
            if self.draining:
                raise LiveError("the server is shutting down; connect to another server or try again later")
            if self.open_streams >= self.max_streams:
                raise LiveError(f"the server is full: {self.max_streams} streams are open (--max-streams); "
                                "try again when one ends")
            if self.load > 1.0:
                raise LiveError(f"the server is not keeping up with real time ({self.load:.2f}x); it takes no new "
                                "stream until it does: try again later or another server")
            rec = self.recognizer(start["decoder"])
            sid = next(self.ids)
            rec.open(sid)
            self.outboxes[sid] = outbox
            sender = asyncio.create_task(self._send_loop(ws, outbox))
            await outbox.put({"type": "ready", "stream": sid, "chunk_ms": rec.chunk * 10, "decoder": rec.decoder})
            ended = False
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self.idle_seconds)
                except asyncio.TimeoutError:
                    if ended:
                        continue       # waiting for our own final result
                    raise LiveError(f"no audio or end message for {self.idle_seconds:g} s; the stream is closed "
                                    "(the result so far follows)") from None
                if isinstance(message, (bytes, bytearray)):
                    if ended:
                        await outbox.put(_error("audio after the end message; open a new connection for a new "
                                                "utterance"))
                        continue
                    rec.feed(sid, decode_audio(message, start["encoding"]))
                else:
                    kind = _message_type(message)
                    if kind != "end":
                        raise LiveError(f"unexpected message {message[:60]!r}; send audio as binary messages and "
                                        "{\"type\": \"end\"} to finish")
                    if ended:
                        await outbox.put(_error("a second end message; the final result follows"))
                        continue
                    rec.end(sid)
                    ended = True
                self.wake.set()
        except LiveError as err:
            await self._refuse(ws, outbox, rec, sid, str(err))
        except ConnectionClosed:
            if rec is not None and sid is not None:
                rec.close(sid)   # a client that left: its stream is dropped, nobody else notices
            if sender is not None:
                sender.cancel()  # no final result will come for it
        finally:
            if sender is not None:
                try:
                    await sender
                except asyncio.CancelledError:
                    pass
            self.outboxes.pop(sid, None)

    async def _refuse(self, ws, outbox, rec, sid, message: str) -> None:
        """An error to this client only; an open stream is ended so the result so far still arrives."""
        if rec is None or sid not in rec.streams:
            await ws.send(json.dumps(_error(message)))
            await ws.close()
            return
        await outbox.put(_error(message))
        if not rec.streams[sid].ended:
            rec.end(sid)
        self.wake.set()
        # the final result closes the connection (see _send_loop); the handler waits on the sender

    async def _send_loop(self, ws, outbox: asyncio.Queue) -> None:
        from websockets.exceptions import ConnectionClosed
        while True:
            event = await outbox.get()
            try:
                await ws.send(json.dumps(event))
            except ConnectionClosed:
                return
            if event.get("type") == "final":
                self.served += 1
                await ws.close()
                return

    def stats(self) -> dict:
        """What the worker has done so far (``GET /stats``): the load benchmark reads it."""
        recs = list(self.recognizers.values())
        ticks = sum(r.ticks for r in recs)
        return {"open_streams": self.open_streams, "served": self.served, "ticks": ticks,
                "model_calls": sum(r.model_calls for r in recs),
                "stream_steps": sum(sum(r.batch_sizes) for r in recs),
                "compute_seconds": sum(sum(r.tick_seconds) for r in recs),
                "mean_batch": sum(sum(r.batch_sizes) for r in recs) / max(ticks, 1),
                "max_batch": max((max(r.batch_sizes, default=0) for r in recs), default=0),
                "load": self.load, "draining": self.draining}

    def http(self, connection, request):
        """Plain HTTP GETs (no WebSocket upgrade): ``/`` is the page that listens, ``/stats`` the worker's
        counters as JSON; anything else is a 404."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if request.path in ("/", "/index.html"):
            return _respond(connection, page_html(), "text/html; charset=utf-8")
        if request.path == "/stats":
            return _respond(connection, json.dumps(self.stats()), "application/json")
        return connection.respond(HTTPStatus.NOT_FOUND, "not found: the page is at /, the WebSocket at /, "
                                                        "counters at /stats\n")

    # ---- the worker -----------------------------------------------------------------------------------
    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            busy = False
            for rec in list(self.recognizers.values()):
                work = rec.collect()
                if work is None:
                    continue
                busy = True
                results = await loop.run_in_executor(self.pool, rec.compute, work)
                self.load = 0.8 * self.load + 0.2 * rec.tick_seconds[-1] / (rec.chunk * 0.01)
                for event in rec.deliver(work, results):
                    box = self.outboxes.get(event.pop("stream"))
                    if box is not None:
                        box.put_nowait(event)
            if not busy:
                self.load *= 0.5
                if self.draining and self.open_streams == 0:
                    return
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

    def drain(self) -> None:
        """SIGTERM: refuse new streams, end every open one (its final result is still delivered)."""
        if self.draining:
            return
        self.draining = True
        for rec in self.recognizers.values():
            for sid, s in list(rec.streams.items()):
                if not s.ended:
                    box = self.outboxes.get(sid)
                    if box is not None:
                        box.put_nowait(_error("the server is shutting down; this stream ends here (its final "
                                              "result follows)"))
                    rec.end(sid)
        self.wake.set()

    async def run(self, host: str, port: int, ready=None) -> None:
        from websockets.asyncio.server import serve
        self.wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.drain)
            except (NotImplementedError, RuntimeError):   # not the main thread (tests), or no signals here
                pass
        async with serve(self.handler, host, port, process_request=self.http, max_size=2 ** 22,
                         ping_interval=20, ping_timeout=20) as server:
            bound = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(bound)
            worker = asyncio.create_task(self.worker())
            await worker                      # returns once draining has finished every stream
            server.close()
            while self.outboxes:              # the last finals are on their way
                await asyncio.sleep(0.01)
        self.pool.shutdown()


def _error(message: str) -> dict:
    return {"type": "error", "message": message}


def _message_type(message: str):
    try:
        data = json.loads(message)
    except ValueError:
        return None
    return data.get("type") if isinstance(data, dict) else None


def page_html() -> str:
    return resources.files("convformer.asr").joinpath("web/live.html").read_text()


def _respond(connection, body: str, content_type: str):
    response = connection.respond(HTTPStatus.OK, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response
