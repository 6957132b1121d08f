"""The speech model shipped in the package: small, loadable, honest about its numbers, and the default of
`convformer asr transcribe` / `asr eval`."""
import json

import pytest
import torch

from convformer.asr.pretrained import SHIPPED, shipped_card
from convformer.asr.task import BUNDLED, load_asr

from test_real_voices import needs_fsdd  # noqa: F401  (shared skip marker)


@pytest.fixture(scope="module")
def shipped():
    assert SHIPPED.is_file(), "the shipped speech model is missing (scripts/ship_speech_model.py writes it)"
    return load_asr(str(SHIPPED))


def test_shipped_model_is_small_and_a_hybrid(shipped):
    model, vocab = shipped
    card = shipped_card()
    assert SHIPPED.stat().st_size <= 10 * 2 ** 20 and card["size_bytes"] == SHIPPED.stat().st_size
    assert type(model).__name__ == card["model"] == "ConformerHybrid" and len(vocab) == 28
    assert "recipes/asr/conformer_hybrid_xs_espeak.yaml" in card["recipe"]


def test_shipped_card_states_what_the_weights_measure(shipped, tmp_path):
    """The card's held-out synthetic-voice figures are recomputed here from the shipped file."""
    from convformer.cli import main
    out = tmp_path / "eval.json"
    assert main(["asr", "eval", "--decoder", "rnnt", "--output", str(out)]) == 0   # no weights: the shipped ones
    report = json.loads(out.read_text())
    want = shipped_card()["results"]["synthetic_heldout_voices/rnnt/default"]
    assert report["manifest"].endswith("test.jsonl") and report["offline"]["utterances"] == want["utterances"]
    assert abs(report["offline"]["cer"] - want["cer"]) < 0.01 and abs(report["offline"]["wer"] - want["wer"]) < 0.01


def test_transcribe_without_weights_uses_the_shipped_model(shipped, capsys):
    from convformer.asr.data import FrontendConfig, LogMelFrontend, load_audio
    from convformer.asr.task import decode_batch
    from convformer.cli import main
    wav = str(BUNDLED / "test" / "0001.flac")
    assert main(["asr", "transcribe", wav]) == 0
    captured = capsys.readouterr()
    assert "using the shipped model conformer_hybrid_xs_espeak" in captured.err
    model, vocab = shipped
    feats, lengths = LogMelFrontend(FrontendConfig()).eval()(load_audio(wav))
    with torch.no_grad():
        want = decode_batch(model, vocab, feats, lengths)[0]
    assert captured.out.splitlines()[0] == f"{wav}: {want}"
    assert main(["asr", "transcribe", wav, "--stream"]) == 0
    final = [line for line in capsys.readouterr().out.splitlines() if "final:" in line][0]
    assert final.split("final: ", 1)[1] == want
