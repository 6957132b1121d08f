"""Generate the small spoken corpus under data/speech/ with Debian's espeak-ng (not needed at run time).

    sudo apt-get install espeak-ng   # once; the generated corpus is committed, so tests and the demo never need it
    python scripts/make_speech_corpus.py [--out data/speech] [--train 460] [--test 100] [--seed 0]

Utterances are spoken digit strings ("four one seven") and short words and phrases, each in a voice drawn
from espeak-ng's English voices and variants, at a random speed (words per minute) and pitch. The test
split uses voices the training split never hears. Audio is resampled to 16 kHz, trimmed to 80 ms of silence\nat each end and stored as 16-bit FLAC;
each split has a NeMo-style manifest (one JSON object per line: audio_filepath, duration, text, voice,
speed, pitch), paths relative to the manifest.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DIGITS = "zero one two three four five six seven eight nine".split()
WORDS = """yes no up down left right stop go on off start open close red green blue yellow black white
orange purple brown cat dog bird fish horse cow sheep mouse lion tiger bear rabbit apple bread milk water
coffee tea cheese house door window table chair bed car bus train plane boat ship road city river hill
tree flower grass rain snow wind sun moon star morning evening night today tomorrow monday friday summer
winter spring hello thank you please sorry good bad big small hot cold fast slow early late happy sad
one more time turn the light on turn it off call my mother play some music what time is it how are you
where is the station it is raining again the cat sat on the mat open the window please close the door
bring me water a cup of tea see you later good night i like green apples the dog runs fast read a book
the train is late we are going home my name is sam set an alarm for seven take the next left it's cold
outside don't stop now let's go to the park""".split()
PHRASE_LEN = (1, 4)
TRAIN_VOICES = ["en-us+m1", "en-us+f3", "en-gb+m3", "en-gb-x-rp+f2", "en-gb-scotland+m2", "en-029+f1",
                "en-us+m4", "en-gb+f4"]
TEST_VOICES = ["en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m6", "en-us+m7"]


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.45:
        return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 5)))
    start = rng.randrange(len(WORDS))
    n = rng.randint(*PHRASE_LEN)
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def speak(text: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly
    wav = workdir / "u.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                   check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    g = math.gcd(rate, 16000)
    audio = resample_poly(audio, 16000 // g, rate // g)
    loud = np.flatnonzero(np.abs(audio) > 0.01)  # trim espeak's silence, keeping 80 ms on each side
    if len(loud):
        audio = audio[max(0, loud[0] - 1280):loud[-1] + 1280]
    return np.clip(audio, -1, 1).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/speech")
    p.add_argument("--train", type=int, default=460)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: sudo apt-get install espeak-ng", file=sys.stderr)
        return 2
    import soundfile as sf
    rng = random.Random(args.seed)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for split, count, voices in (("train", args.train, TRAIN_VOICES), ("test", args.test, TEST_VOICES)):
            (out / split).mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(count):
                text, voice = sentence(rng), rng.choice(voices)
                speed, pitch = rng.randint(130, 190), rng.randint(25, 75)
                audio = speak(text, voice, speed, pitch, Path(tmp))
                name = f"{split}/{i:04d}.flac"
                sf.write(out / name, audio, 16000, subtype="PCM_16")
                lines.append(json.dumps({"audio_filepath": name, "duration": round(len(audio) / 16000, 3),
                                         "text": text, "voice": voice, "speed": speed, "pitch": pitch}))
            (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
            print(f"{split}: {count} utterances, voices {', '.join(voices)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
