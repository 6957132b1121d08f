"""`convformer asr serve`, a real server on 127.0.0.1 (a free port) in its own process: the protocol, every
fault the issue names (each refused to that client only, while another stream's transcript stays exactly
its offline one), the limits, SIGTERM draining, the page, and the `asr stream` / `asr transcribe -` clients."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("websockets")

from convformer.asr.client import start_server, stream_samples  # noqa: E402
from convformer.asr.data import load_audio  # noqa: E402
from convformer.asr.live_frontend import CausalLogMel, model_norm  # noqa: E402
from convformer.asr.pretrained import SHIPPED  # noqa: E402
from convformer.asr.task import BUNDLED, decode_batch, load_asr  # noqa: E402

CLI = [sys.executable, "-m", "convformer"]
TEST_AUDIO = sorted((BUNDLED / "test").glob("*.flac"))


class Server:
    def __init__(self, *args):
        self.proc, self.port = start_server("--threads", "1", *args)
        self.url = f"ws://127.0.0.1:{self.port}/"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    s = Server("--max-streams", "6", "--idle-seconds", "20", "--max-backlog", "200")
    yield s
    t0 = time.monotonic()
    assert s.stop() == 0 and time.monotonic() - t0 < 20   # drains and exits after every kind of client


@pytest.fixture(scope="module")
def reference():
    """Offline decoding of the int16 audio a client sends, with the server's causal front end."""
    model, vocab = load_asr(str(SHIPPED))
    frontend = CausalLogMel(model_norm(model))

    def offline(samples, quantize: bool = True) -> str:
        x = np.asarray(samples, np.float32)
        if quantize:   # what a client sends: 16-bit samples
            x = (np.clip(x, -1, 1 - 1 / 32768) * 32768).astype("<i2").astype(np.float32) / 32768.0
        feats, n = frontend(torch.from_numpy(x))
        return decode_batch(model, vocab, feats, torch.tensor([int(n)]))[0]
    return offline


def wave(i: int) -> np.ndarray:
    return load_audio(TEST_AUDIO[i]).numpy()


def run(*coros):
    async def all_of():
        return await asyncio.gather(*coros)
    return asyncio.run(all_of())


async def raw_session(url, messages, pause=0.0):
    """Send raw messages (bytes or str) and collect every reply until the server closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    replies = []
    async with connect(url) as ws:
        for m in messages:
            try:
                await ws.send(m)
            except ConnectionClosed:
                break
            await asyncio.sleep(pause)
        try:
            async for r in ws:
                replies.append(json.loads(r))
        except ConnectionClosed:
            pass
    return replies


def test_streams_get_their_offline_transcripts_with_partials(server, reference):
    a, b = wave(0), wave(1)
    ra, rb = run(stream_samples(server.url, a, realtime=False, block_ms=70),
                 stream_samples(server.url, b, realtime=False, block_ms=130, decoder="ctc"))
    assert ra["final"]["text"] == reference(a) and ra["final"]["text"]
    assert abs(ra["final"]["seconds"] - len(a) / 16000) < 1e-3 and not ra["errors"]
    assert ra["ready"]["decoder"] == "rnnt" and rb["ready"]["decoder"] == "ctc"
    ends = [p["end"] for p in ra["partials"]]
    assert ends == sorted(ends) and ra["partials"][-1]["text"] == ra["final"]["text"]
    assert all(p["latency"] >= 0 for p in ra["partials"])
    # the CTC head of the same hybrid, offline
    model, vocab = load_asr(str(SHIPPED))
    pcm = (np.clip(b, -1, 1 - 1 / 32768) * 32768).astype("<i2").astype(np.float32) / 32768.0
    feats, n = CausalLogMel(model_norm(model))(torch.from_numpy(pcm))
    assert rb["final"]["text"] == decode_batch(model, vocab, feats, torch.tensor([int(n)]), decoder="ctc")[0]


def _bad_clients(url):
    start = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"})
    pcm = (wave(3)[:8000] * 32768).astype("<i2").tobytes()
    return {
        "garbage first": raw_session(url, [os.urandom(999)]),
        "not json": raw_session(url, ["hello server"]),
        "wrong type": raw_session(url, [json.dumps({"type": "hello"})]),
        "rate": raw_session(url, [json.dumps({"type": "start", "sample_rate": 44100, "encoding": "pcm_s16le"})]),
        "encoding": raw_session(url, [json.dumps({"type": "start", "sample_rate": 16000, "encoding": "mp3"})]),
        "decoder": raw_session(url, [json.dumps({"type": "start", "sample_rate": 16000, "decoder": "beam"})]),
        "odd bytes": raw_session(url, [start, pcm, b"\x01\x02\x03", json.dumps({"type": "end"})]),
        "text mid-stream": raw_session(url, [start, pcm, "garbage"]),
        "after end": raw_session(url, [start, pcm, json.dumps({"type": "end"}), pcm]),
    }


def test_every_fault_is_refused_to_its_client_only(server, reference):
    """Bad clients and a client that leaves mid-utterance, all at once beside a good stream."""
    good = wave(2)

    async def leaver():
        from websockets.asyncio.client import connect
        async with connect(server.url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"}))
            await ws.send((wave(4)[:12000] * 32768).astype("<i2").tobytes())
            await asyncio.sleep(0.3)
        return "left"

    bad = _bad_clients(server.url)
    results = run(stream_samples(server.url, good, realtime=True, block_ms=100), leaver(), *bad.values())
    assert results[0]["final"]["text"] == reference(good) and not results[0]["errors"]
    replies = dict(zip(bad, results[2:]))
    expect = {"garbage first": "expected a JSON start message first, got audio bytes",
              "not json": "the start message is not JSON", "wrong type": "expected a start message first",
              "rate": "sample rate 44100 is not supported: send 16000 Hz",
              "encoding": "encoding 'mp3' is not supported", "decoder": "decoder 'beam' is not offered",
              "odd bytes": "not whole pcm_s16le samples", "text mid-stream": "unexpected message 'garbage'",
              "after end": "audio after the end message"}
    for name, want in expect.items():
        errors = [r["message"] for r in replies[name] if r["type"] == "error"]
        assert len(errors) == 1 and want in errors[0], (name, replies[name])
    # a stream that was open when refused still gets the result of the audio it sent before
    for name in ("odd bytes", "text mid-stream", "after end"):
        finals = [r for r in replies[name] if r["type"] == "final"]
        assert len(finals) == 1 and abs(finals[0]["seconds"] - 0.5) < 1e-3, name


def test_minutes_of_silence_then_speech(server, reference):
    """Two minutes of silence before a digit: caches stay bounded, the text is offline decoding's."""
    audio = np.concatenate([np.zeros(16000 * 120, np.float32), wave(5)])
    result, = run(stream_samples(server.url, audio, realtime=False, block_ms=500))
    assert result["final"]["text"] == reference(audio) and not result["errors"]
    assert abs(result["final"]["seconds"] - len(audio) / 16000) < 1e-3


def test_the_stream_limit_and_the_page(server):
    async def hold(n):
        from websockets.asyncio.client import connect
        socks = [await connect(server.url) for _ in range(n)]
        for ws in socks:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            assert json.loads(await ws.recv())["type"] == "ready"
        refused = await raw_session(server.url, [json.dumps({"type": "start", "sample_rate": 16000})])
        for ws in socks:
            await ws.close()
        return refused
    refused, = run(hold(6))
    assert refused[0]["type"] == "error" and "the server is full: 6 streams are open" in refused[0]["message"]
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10)
    html = page.read().decode()
    assert page.headers["Content-Type"].startswith("text/html") and 'id="toggle"' in html and "getUserMedia" in html
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nothing", timeout=10)


def test_utterance_limit_and_backpressure_say_so_and_keep_the_result(reference):
    s = Server("--max-seconds", "2", "--max-backlog", "0.5")
    try:
        long = np.concatenate([wave(6), wave(7), wave(8)])
        assert len(long) > 2.5 * 16000
        timely, hasty = run(stream_samples(s.url, long, realtime=True, block_ms=250),
                            stream_samples(s.url, long, realtime=False, block_ms=250))
        assert timely["errors"] == ["the utterance is longer than the 2 s limit; the audio after it was not "
                                    "recognised: send an end message before it (the result so far follows)"]
        assert timely["final"]["seconds"] <= 2.0
        # sent faster than the model runs: refused once 0.5 s waits, never silently dropped
        assert len(hasty["errors"]) == 1 and "s behind this stream and cannot keep up" in hasty["errors"][0]
        assert hasty["final"] is not None and hasty["final"]["seconds"] < len(long) / 16000
    finally:
        s.stop()


def test_sigterm_drains_every_open_stream():
    s = Server()
    a, b = np.concatenate([wave(0), wave(1), wave(2)]), np.concatenate([wave(3), wave(4), wave(5)])
    assert min(len(a), len(b)) > 2.5 * 16000

    async def late_term():
        await asyncio.sleep(1.0)     # both streams are mid-utterance (sent in real time)
        s.proc.send_signal(signal.SIGTERM)

    async def leaver():       # gone before the signal: its connection must not keep the server alive
        from websockets.asyncio.client import connect
        async with connect(s.url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            await ws.send((wave(4)[:8000] * 32768).astype("<i2").tobytes())
            await asyncio.sleep(0.2)

    ra, rb, _, _ = run(stream_samples(s.url, a, realtime=True), stream_samples(s.url, b, realtime=True), late_term(),
                       leaver())
    assert s.proc.wait(30) == 0
    for r in (ra, rb):
        assert r["final"] is not None and any("shutting down" in e for e in r["errors"])
        assert 0.5 < r["final"]["seconds"] < 1.6
    assert "stopped after 2 streams" in s.proc.stderr.read()


def test_stream_and_stdin_clients(server, reference, tmp_path):
    path = TEST_AUDIO[9]
    done = subprocess.run(CLI + ["asr", "stream", str(path), "--url", server.url, "--fast"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{path}: {reference(wave(9))}"
    pcm = (np.clip(wave(9), -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()
    done = subprocess.run(CLI + ["asr", "transcribe", "-"], input=pcm, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[-1] == f"stdin: {reference(wave(9))}"
    gone = subprocess.run(CLI + ["asr", "stream", str(path), "--url", "ws://127.0.0.1:9/"], capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 2 and "cannot reach ws://127.0.0.1:9/" in gone.stderr


def test_load_benchmark_four_streams_all_exact(tmp_path):
    """The load benchmark, bounded: 4 real-time streams against a batched server; every final transcript is
    offline decoding's, and the table counts them."""
    from conftest import load_benchmark
    script = load_benchmark("asr_serve_load")
    out = tmp_path / "load.json"
    report = script.main(["--streams", "4", "--seconds", "2", "--modes", "batched", "--threads", "1",
                          "--max-latency", "30", "--output", str(out)])
    row, = report["rows"]
    assert row["mode"] == "batched" and row["streams"] == 4 and row["exact"] == 4
    assert row["errors"] == 0 and row["timeouts"] == 0 and row["real_time"]
    # every stream's 2 s went through the model in 320 ms steps: at least 6 stream-steps each
    assert abs(row["audio_seconds"] - 8.0) < 1e-6 and round(row["ticks"] * row["mean_batch"]) >= 4 * 6
    assert row["latency_p50"] <= row["latency_p95"] <= row["latency_p99"]
    assert json.loads(out.read_text())["largest_real_time"] == {"batched": 4}
    assert "| batched | 4 | yes |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_transcribe_realtime_and_narrowband_stdin(reference):
    """`--realtime` plays a file at 1x through the live path; `--rate 8000` stdin is resampled first."""
    path = TEST_AUDIO[1]
    t0 = time.monotonic()
    done = subprocess.run(CLI + ["asr", "transcribe", str(path), "--realtime"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"{path}: {reference(wave(1))}"
    stamps = [float(line.split("]")[0].strip(" [s")) for line in lines[:-1]]
    assert stamps == sorted(stamps) and stamps                      # partials, in time order
    assert time.monotonic() - t0 > len(wave(1)) / 16000             # it took at least the audio's duration
    # 8 kHz PCM on stdin: the same text as the file resampled the way load_audio resamples it
    from scipy.signal import resample_poly
    narrow = resample_poly(wave(1), 1, 2).astype(np.float32)
    pcm = (np.clip(narrow, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    done = subprocess.run(CLI + ["asr", "transcribe", "-", "--rate", "8000"], input=pcm.tobytes(),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    up = resample_poly(pcm.astype(np.float32) / 32768.0, 2, 1).astype(np.float32)
    assert done.stdout.decode().splitlines()[-1] == f"stdin: {reference(up, quantize=False)}"
    assert "resampled to 16000 Hz after the whole input is read" in done.stderr.decode()
    bad = subprocess.run(CLI + ["asr", "transcribe", "-", "--rate", "0"], input=b"", capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"--rate must be a positive sample rate" in bad.stderr


def test_a_taken_port_is_a_one_line_error(capsys):
    import socket
    from convformer.cli import main
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["asr", "serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (") and "pick another --port" in err
    assert main(["asr", "serve", "--max-streams", "0"]) == 2
    assert "--max-streams must be positive, got 0" in capsys.readouterr().err
