"""What masking the empty bands of narrowband audio is worth, on a real speaker never heard in training.

    python benchmarks/asr_narrowband.py [--epochs 12] [--held-out theo] [--model conformer_ctc_xs]
                                        [--arms masked unmasked] [--threads 2]

FSDD (../shared/data/fsdd, CC BY-SA 4.0) is 8 kHz speech: resampled to 16 kHz, the 80 mel bands above
4 kHz hold only resampling residue, which per-band normalisation turns into unit-variance noise. Each arm
trains the same model on the same speakers with the same seed and budget (`convformer asr train`'s engine),
one with those bands masked (the default) and one without; both are scored offline on every recording of the
held-out speaker, at the model's default look-ahead and at zero look-ahead. Writes
benchmarks/results/asr_narrowband.json (+ .md).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from convformer.asr.config import AsrTrainConfig
from convformer.asr.data import FrontendConfig, LogMelFrontend
from convformer.asr.fsdd import fsdd_manifests
from convformer.asr.task import BUNDLED, Utterances, collate_utterances, decode_batch, load_asr, read_manifest
from convformer.asr.ctc import error_rates
from convformer.bench.measure import machine_info
from convformer.engine.train import train

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


@contextmanager
def unmasked():
    """The frontend as it was before narrowband handling: no band is ever masked."""
    real = LogMelFrontend.bands_above
    LogMelFrontend.bands_above = lambda self, hz: torch.zeros(self.fb.shape[0], dtype=torch.bool)
    try:
        yield
    finally:
        LogMelFrontend.bands_above = real


def score(weights: str, manifest: Path, context_index: int) -> dict:
    net, vocab = load_asr(weights)
    net.encoder.set_context(context_index)
    utts = Utterances(read_manifest(manifest), vocab, LogMelFrontend(FrontendConfig()).eval())
    hyps = []
    for feats, lengths, *_ in torch.utils.data.DataLoader(utts, batch_size=64, collate_fn=collate_utterances):
        hyps += decode_batch(net, vocab, feats, lengths)
    rates = error_rates(utts.texts, hyps)
    return {"context": list(net.encoder.att_context), "cer": 100 * rates["cer"], "wer": 100 * rates["wer"],
            "utterances": rates["utterances"]}


def run(arms, epochs: int, held_out: str, model: str, threads: int | None, work: Path, limit: int = 0,
        synthetic: bool = False) -> dict:
    paths = fsdd_manifests(FSDD, work / "manifests", held_out=(held_out,))
    if limit:  # a quick run (tests): the first recordings of each split
        for path in paths.values():
            path.write_text("\n".join(path.read_text().splitlines()[:limit]) + "\n")
    rows = []
    for arm in arms:
        train_manifest = "train.jsonl" + (f",{BUNDLED / 'train.jsonl'}" if synthetic else "")
        cfg = AsrTrainConfig(model=model, data=str(work / "manifests"), train_manifest=train_manifest,
                             val_manifest="val.jsonl", epochs=epochs, batch_size=min(32, limit or 32),
                             threads=threads,
                             output=str(work / "runs"), name=arm)
        with unmasked() if arm == "unmasked" else nullcontext():
            result = train(cfg, progress=False, log=lambda *_: None)
            weights = str(work / "runs" / arm / "best.safetensors")
            contexts = len(load_asr(weights)[0].cfg.att_context)
            default, zero = score(weights, paths["heldout"], 0), score(weights, paths["heldout"], contexts - 1)
        rows.append({"arm": arm, "val_cer_seen_speakers": result["val_cer"], "heldout_default": default,
                     "heldout_zero_lookahead": zero, "seconds": result["seconds"]})
    return {"machine": machine_info(), "settings": {"model": model, "epochs": epochs, "held_out": held_out,
                                                    "batch_size": min(32, limit or 32), "limit": limit,
                                                    "synthetic_voices_in_training": synthetic},
            "results": rows}


def markdown(report: dict) -> str:
    s = report["settings"]
    extra = " and the bundled synthetic voices" if s.get("synthetic_voices_in_training") else ""
    lines = [f"{s['model']}, {s['epochs']} epochs on FSDD without {s['held_out']}{extra}; scored on all of "
             f"{s['held_out']}'s recordings", "",
             "| arm | val CER, seen speakers (%) | held-out CER / WER, default look-ahead (%) | "
             "held-out CER / WER, zero look-ahead (%) | train s |", "|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        d, z = r["heldout_default"], r["heldout_zero_lookahead"]
        lines.append(f"| {r['arm']} | {r['val_cer_seen_speakers']:.1f} | {d['cer']:.1f} / {d['wer']:.1f} | "
                     f"{z['cer']:.1f} / {z['wer']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--held-out", default="theo")
    parser.add_argument("--model", default="conformer_ctc_xs")
    parser.add_argument("--arms", nargs="+", default=["masked", "unmasked"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=0, help="Use the first N recordings of each split (a quick run).")
    parser.add_argument("--synthetic", action="store_true", help="Also train on the bundled espeak-ng voices (16 kHz).")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "asr_narrowband.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        report = run(args.arms, args.epochs, args.held_out, args.model, args.threads, Path(work), args.limit,
                     args.synthetic)
    Path(args.out).write_text(json.dumps(report, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
