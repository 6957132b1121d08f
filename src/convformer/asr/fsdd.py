"""Real voices: manifests for the Free Spoken Digit Dataset (Jackson et al., CC BY-SA 4.0; 8 kHz recordings of
one English digit word each, ``{digit}_{speaker}_{index}.wav``), split by speaker. Results on it must hold for
voices never heard in training, so whole speakers are held out; the others' recordings are split into
training and validation files."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from convformer.errors import ConvformerError
from convformer.fileio import atomic_write

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def fsdd_manifests(recordings: str | Path, out: str | Path, held_out=("theo",), val_fraction: float = 0.1,
                   seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl``, ``val.jsonl`` (the other speakers' files, split ``val_fraction`` per speaker)
    and ``heldout.jsonl`` (every file of the ``held_out`` speakers) to ``out``, with absolute audio paths.
    Returns the three paths."""
    recordings = Path(recordings)
    files = sorted(p for p in recordings.glob("*.wav") if _NAME.match(p.name)) if recordings.is_dir() else []
    if not files:
        raise ConvformerError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {recordings}")
    by_speaker: dict[str, list[Path]] = {}
    for f in files:
        by_speaker.setdefault(_NAME.match(f.name).group(2), []).append(f)
    unknown = sorted(set(held_out) - set(by_speaker))
    if unknown or len(set(held_out)) >= len(by_speaker):
        raise ConvformerError(f"held-out speakers {list(held_out)} must be some of {sorted(by_speaker)}, not all")
    rng = random.Random(seed)
    splits: dict[str, list[Path]] = {"train": [], "val": [], "heldout": []}
    for speaker, speaker_files in sorted(by_speaker.items()):
        if speaker in held_out:
            splits["heldout"] += speaker_files
            continue
        shuffled = speaker_files[:]
        rng.shuffle(shuffled)
        n_val = max(1, round(val_fraction * len(shuffled)))
        splits["val"] += sorted(shuffled[:n_val])
        splits["train"] += sorted(shuffled[n_val:])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, split_files in splits.items():
        lines = [json.dumps({"audio_filepath": str(f.resolve()), "text": DIGITS[int(_NAME.match(f.name).group(1))],
                             "speaker": _NAME.match(f.name).group(2)}) for f in split_files]
        paths[split] = atomic_write(out / f"{split}.jsonl", lambda tmp, text="\n".join(lines) + "\n":
                                    Path(tmp).write_text(text))
    return paths
