"""Speech on real voices: what each training lever is worth on a speaker never heard in training.

    python benchmarks/asr_real_voices.py --arms ctc speed speed_noise [--epochs 30] [--held-out theo]
                                         [--threads 2] [--seed 0] [--out results/asr_real_voices.json]

FSDD (../shared/data/fsdd, CC BY-SA 4.0) holds four speakers saying one digit each, recorded at 8 kHz.
Every arm trains through `convformer asr train`'s engine on the same three speakers (90 % of their files;
the other 10 % validate and pick the best epoch) with the same seed and epochs, and is scored offline on
every recording of the held-out speaker, at the model's default look-ahead and at zero look-ahead. An arm
is a set of `AsrTrainConfig` overrides (ARMS below); arms named in one run share its JSON file, which a
later run with other arms extends (rows of the same arm and seed are replaced). Writes --out (+ .md).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from convformer.asr.config import AsrTrainConfig
from convformer.asr.ctc import error_rates
from convformer.asr.data import FrontendConfig, LogMelFrontend
from convformer.asr.fsdd import fsdd_manifests
from convformer.asr.task import BUNDLED, Utterances, collate_utterances, decode_batch, load_asr, read_manifest
from convformer.bench.measure import machine_info
from convformer.engine.train import train
from convformer.fileio import atomic_write

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
SYNTHETIC = "+synthetic"  # a train_manifest suffix: add the bundled espeak-ng voices (16 kHz) to the training set

# name -> AsrTrainConfig overrides
ARMS = {
    "ctc": {},
    "masked": {"narrowband": "mask"},
    "unmasked": {"narrowband": "keep"},
    "no_specaugment": {"spec_augment": False},
    "gain": {"gain_db": 6.0},
    "speed": {"speed_perturb": True},
    "noise": {"noise": 0.5},
    "speed_noise": {"speed_perturb": True, "noise": 0.5},
    "speed_noise_synthetic": {"speed_perturb": True, "noise": 0.5, "train_manifest": SYNTHETIC},
    "synthetic": {"train_manifest": SYNTHETIC},
    "synthetic_only": {"train_manifest": str(BUNDLED / "train.jsonl")},
    "hybrid": {"model": "conformer_hybrid_xs"},
    "hybrid_ctc_head": {"model": "conformer_hybrid_xs", "decoder": "ctc"},
    "rnnt": {"model": "conformer_hybrid_xs", "ctc_weight": 0.0},
    "hybrid_speed_noise": {"model": "conformer_hybrid_xs", "speed_perturb": True, "noise": 0.5},
    "transducer": {"model": "conformer_transducer_xs"},
    # for the latency comparisons (benchmarks/asr_latency.py): single-latency and full-context models
    "single_32_7": {"model_kwargs": {"att_context": [[32, 7]]}},
    "single_32_3": {"model_kwargs": {"att_context": [[32, 3]]}},
    "single_32_0": {"model_kwargs": {"att_context": [[32, 0]]}},
    # unlimited attention and centred depthwise convolutions (the subsampling stays causal: centred, it leaves
    # some one-word recordings fewer encoder frames than their transcript needs)
    "full_context": {"model_kwargs": {"att_context": [[-1, -1]], "att_context_style": "regular", "causal_conv": False}},
}


def score(weights: str, manifest: Path, context_index: int, decoder: str = "auto") -> dict:
    net, vocab = load_asr(weights)
    net.encoder.set_context(context_index)
    utts = Utterances(read_manifest(manifest), vocab, LogMelFrontend(FrontendConfig()).eval(),
                      mask_narrowband=net.narrowband == "mask")
    hyps = []
    for feats, lengths, *_ in torch.utils.data.DataLoader(utts, batch_size=64, collate_fn=collate_utterances):
        hyps += decode_batch(net, vocab, feats, lengths, decoder=decoder)
    rates = error_rates(utts.texts, hyps)
    return {"context": list(net.encoder.att_context), "cer": 100 * rates["cer"], "wer": 100 * rates["wer"],
            "utterances": rates["utterances"]}


def run(arms, epochs: int, held_out: str, threads: int | None, work: Path, limit: int = 0, seed: int = 0,
        batch_size: int = 32) -> dict:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {sorted(ARMS)}")
    paths = fsdd_manifests(FSDD, work / "manifests", held_out=(held_out,))
    if limit:  # a quick run (tests): the first recordings of each split
        for path in paths.values():
            path.write_text("\n".join(path.read_text().splitlines()[:limit]) + "\n")
    batch = min(batch_size, limit or batch_size)
    rows = []
    for arm in arms:
        overrides = dict(ARMS[arm])
        manifest = overrides.pop("train_manifest", "train.jsonl")
        manifest = "train.jsonl," + str(BUNDLED / "train.jsonl") if manifest == SYNTHETIC else manifest
        cfg = AsrTrainConfig(**{"model": "conformer_ctc_xs", **overrides}, data=str(work / "manifests"),
                             train_manifest=manifest, val_manifest="val.jsonl", epochs=epochs, batch_size=batch,
                             threads=threads, seed=seed, output=str(work / "runs"), name=f"{arm}_{seed}")
        result = train(cfg, progress=False, log=lambda *_: None)
        folder = work / "runs" / f"{arm}_{seed}"
        weights = str(folder / "best.safetensors")
        contexts = len(load_asr(weights)[0].cfg.att_context)
        history = json.loads((folder / "metrics.json").read_text())
        curve = [round(r["val_cer"], 2) for r in (history if isinstance(history, list) else history["epochs"])]
        rows.append({"arm": arm, "seed": seed, "overrides": ARMS[arm], "model": cfg.model,
                     "val_cer_seen_speakers": result["val_cer"], "val_cer_by_epoch": curve,
                     "heldout_default": score(weights, paths["heldout"], 0, cfg.decoder),
                     "heldout_zero_lookahead": score(weights, paths["heldout"], contexts - 1, cfg.decoder),
                     "seconds": result["seconds"]})
    return {"machine": machine_info(), "settings": {"epochs": epochs, "held_out": held_out, "batch_size": batch,
                                                    "limit": limit}, "results": rows}


def merge(old: dict | None, new: dict) -> dict:
    """``new``'s rows added to ``old``'s (same settings), replacing rows of the same arm and seed."""
    if not old or old.get("settings") != new["settings"]:
        return new
    keep = [r for r in old["results"] if (r["arm"], r["seed"]) not in {(n["arm"], n["seed"]) for n in new["results"]}]
    return {**new, "results": keep + new["results"]}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"{s['epochs']} epochs on FSDD without {s['held_out']} (batch {s['batch_size']}); scored on every "
             f"recording of {s['held_out']}", "",
             "| arm | model | seed | val CER, seen speakers (%) | held-out CER / WER, default look-ahead (%) | "
             "held-out CER / WER, zero look-ahead (%) | train s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        d, z = r["heldout_default"], r["heldout_zero_lookahead"]
        lines.append(f"| {r['arm']} | {r['model']} | {r['seed']} | {r['val_cer_seen_speakers']:.1f} | "
                     f"{d['cer']:.1f} / {d['wer']:.1f} | {z['cer']:.1f} / {z['wer']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["ctc", "speed_noise"], help=f"Of: {', '.join(ARMS)}.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--held-out", default="theo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=0, help="Use the first N recordings of each split (a quick run).")
    parser.add_argument("--keep", default=None, help="Folder to keep the manifests and run folders (weights) in "
                                                     "[default: a temporary folder, removed after].")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "asr_real_voices.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        report = run(args.arms, args.epochs, args.held_out, args.threads, Path(args.keep or work), args.limit,
                     args.seed)
    out = Path(args.out)
    report = merge(json.loads(out.read_text()) if out.is_file() else None, report)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(report) + "\n"))
    print(markdown(report))


if __name__ == "__main__":
    main()
