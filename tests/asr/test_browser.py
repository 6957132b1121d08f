"""The page `asr serve` serves, in a real browser: Debian's Chromium, headless, driven by Playwright, with a
WAV file as its microphone. Its final transcript must equal the offline transcript of that file.

Skips (saying why) where Chromium or Playwright is missing; `make test-browser` installs both and runs it.
The screenshot is saved in the test's folder, and to $CONVFORMER_SCREENSHOT when that is set (docs/asr.md's
screenshot comes from there)."""
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test-browser installs it)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                                               "(make test-browser installs it)")

from convformer.asr.data import load_audio  # noqa: E402
from convformer.asr.live_frontend import CausalLogMel, model_norm  # noqa: E402
from convformer.asr.pretrained import SHIPPED  # noqa: E402
from convformer.asr.task import BUNDLED, decode_batch, load_asr  # noqa: E402

from test_serve import Server  # noqa: E402

SPOKEN = BUNDLED / "test" / "0001.flac"


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def test_the_page_transcribes_its_microphone(tmp_path):
    audio = load_audio(SPOKEN).numpy()
    mic = tmp_path / "mic.wav"
    write_wav(mic, audio)
    model, vocab = load_asr(str(SHIPPED))
    pcm = (np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2").astype(np.float32) / 32768.0
    feats, n = CausalLogMel(model_norm(model))(torch.from_numpy(pcm))
    want = decode_batch(model, vocab, feats, torch.tensor([int(n)]))[0]
    server = Server()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}%noloop", "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.click("#toggle")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('listening')",
                                   timeout=20_000)
            page.wait_for_timeout(1000 * len(audio) / 16000 + 1500)    # the file plays, then silence
            page.click("#toggle")
            page.wait_for_function("document.body.dataset.final !== undefined", timeout=30_000)
            got = page.evaluate("document.body.dataset.final")
            shot = tmp_path / "live_page.png"
            page.screenshot(path=str(shot))
            if os.environ.get("CONVFORMER_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["CONVFORMER_SCREENSHOT"])
            browser.close()
    finally:
        server.stop()
    assert shot.read_bytes()[:4] == b"\x89PNG"
    assert got == want and want
