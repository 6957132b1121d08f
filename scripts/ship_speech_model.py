"""Measure a trained speech model and ship it in the package as the default of `convformer asr transcribe`.

    python scripts/ship_speech_model.py runs/conformer_hybrid_xs_espeak/best.safetensors [--threads 2]

Scores the weights with both heads, at the default and the zero look-ahead context, on the bundled corpus's
test split (synthetic voices training never heard) and on every recording of the held-out FSDD speaker
(../shared/data/fsdd, real 8 kHz voices; the model never heard any real voice). Copies the weights to
src/convformer/asr/pretrained/ and writes the card (JSON) beside them. Refuses weights over 10 MB.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from asr_real_voices import FSDD  # noqa: E402
from convformer.asr.ctc import error_rates  # noqa: E402
from convformer.asr.data import FrontendConfig, LogMelFrontend, load_audio  # noqa: E402
from convformer.asr.fsdd import fsdd_manifests  # noqa: E402
from convformer.asr.pretrained import SHIPPED, SHIPPED_CARD  # noqa: E402
from convformer.asr.task import BUNDLED, Utterances, collate_utterances, decode_batch, load_asr, read_manifest  # noqa: E402
from convformer.fileio import atomic_write  # noqa: E402
from convformer.weights.io import read_state_dict, save_state_dict  # noqa: E402

MAX_BYTES = 10 * 2 ** 20


def score(net, vocab, manifest: Path, context: int, decoder: str) -> dict:
    net.encoder.set_context(context)
    utts = Utterances(read_manifest(manifest), vocab, LogMelFrontend(FrontendConfig()).eval())
    hyps = []
    for feats, lengths, *_ in torch.utils.data.DataLoader(utts, batch_size=64, collate_fn=collate_utterances):
        hyps += decode_batch(net, vocab, feats, lengths, decoder=decoder)
    rates = error_rates(utts.texts, hyps)
    return {"cer": round(100 * rates["cer"], 2), "wer": round(100 * rates["wer"], 2), "utterances": rates["utterances"]}


def training_feature_stats() -> str:
    """The log-mel statistics of the bundled training audio (what `asr train` records since live recognition),
    as the weight file's ``feature_stats`` metadata."""
    from convformer.asr.live_frontend import FeatureNorm, feature_stats
    raw = LogMelFrontend(FrontendConfig(normalize="none")).eval()
    entries = read_manifest(BUNDLED / "train.jsonl")
    return FeatureNorm("fixed", *feature_stats(raw(load_audio(e["audio_filepath"]))[0][0] for e in entries)).to_meta()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--held-out", default="theo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = Path(args.weights).stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{args.weights} is {size / 2 ** 20:.1f} MB; the package ships at most 10 MB")
    net, vocab = load_asr(args.weights)
    contexts = [list(c) for c in net.cfg.att_context]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        real = fsdd_manifests(FSDD, work, held_out=(args.held_out,))["heldout"]
        for data, manifest in (("synthetic_heldout_voices", BUNDLED / "test.jsonl"), ("real_heldout_speaker", real)):
            for decoder in ("rnnt", "ctc"):
                for label, index in (("default", 0), ("zero_lookahead", len(contexts) - 1)):
                    results[f"{data}/{decoder}/{label}"] = score(net, vocab, manifest, index, decoder)
    syn, real_ = results["synthetic_heldout_voices/rnnt/default"], results["real_heldout_speaker/rnnt/default"]
    card = {"model": net.__class__.__name__, "architecture": "conformer_hybrid_xs", "size_bytes": None,
            "recipe": "convformer asr train --config recipes/asr/conformer_hybrid_xs_espeak.yaml",
            "trained_on": "the bundled espeak-ng corpus (data/speech/train.jsonl) only",
            "contexts": contexts, "held_out_real_speaker": f"FSDD {args.held_out} (8 kHz, never heard)",
            "results": results,
            "summary": f"RNN-T head: held-out synthetic voices CER {syn['cer']:.1f}% / WER {syn['wer']:.1f}%, "
                       f"real speaker CER {real_['cer']:.1f}% / WER {real_['wer']:.1f}%"}
    state, meta = read_state_dict(args.weights)
    if not meta.get("feature_stats"):   # weights from before `asr train` recorded them: measure them here
        meta["feature_stats"] = training_feature_stats()
        meta.setdefault("feature_norm", "utterance")
    save_state_dict(state, SHIPPED, meta)
    card["size_bytes"] = SHIPPED.stat().st_size
    atomic_write(SHIPPED_CARD, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=1) + "\n"))
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
