"""Real recordings (FSDD, ../shared/data): manifests split by speaker, narrowband (8 kHz) audio handled in
the features, and several manifests of mixed sample rates in one training run."""
import json
from pathlib import Path

import pytest
import torch

from convformer.asr.config import AsrTrainConfig
from convformer.asr.data import FrontendConfig, LogMelFrontend, band_limit, load_audio
from convformer.asr.fsdd import fsdd_manifests
from convformer.engine.train import train
from convformer.errors import ConvformerError

from test_asr import small_corpus

FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason="the FSDD recordings (../shared/data/fsdd) are not here")


@needs_fsdd
def test_fsdd_manifests_hold_a_whole_speaker_out(tmp_path):
    paths = fsdd_manifests(FSDD, tmp_path, held_out=("theo",))
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in paths.items()}
    assert {r["speaker"] for r in rows["heldout"]} == {"theo"} and len(rows["heldout"]) == 500
    assert "theo" not in {r["speaker"] for r in rows["train"] + rows["val"]}
    assert len(rows["train"]) == 1350 and len(rows["val"]) == 150
    assert not {r["audio_filepath"] for r in rows["train"]} & {r["audio_filepath"] for r in rows["val"]}
    first = rows["heldout"][0]
    assert Path(first["audio_filepath"]).name.startswith(str(["zero", "one", "two", "three", "four", "five", "six",
                                                              "seven", "eight", "nine"].index(first["text"])))
    with pytest.raises(ConvformerError, match="held-out speakers"):
        fsdd_manifests(FSDD, tmp_path, held_out=("nobody",))


@needs_fsdd
def test_narrowband_audio_has_its_empty_bands_masked():
    """8 kHz audio has nothing above 4 kHz; without the mask, per-band normalisation turns those bands into
    unit-variance noise. With it they are exactly 0, and the bands below are untouched."""
    wav = sorted(FSDD.glob("*.wav"))[0]
    assert band_limit(wav) == 4000.0
    frontend = LogMelFrontend(FrontendConfig()).eval()
    audio = load_audio(wav)
    plain, _ = frontend(audio)
    masked, _ = frontend(audio, band_limit_hz=band_limit(wav))
    above = frontend.bands_above(4000.0)
    assert 5 < int(above.sum()) < 40  # the top bands of 80 on the mel scale
    assert masked[0][:, above].abs().max() == 0 and plain[0][:, above].std() > 0.5
    assert torch.equal(masked[0][:, ~above], plain[0][:, ~above])


def test_wideband_audio_is_not_band_limited(tmp_path):
    from convformer.asr.task import BUNDLED
    assert band_limit(sorted((BUNDLED / "test").glob("*.flac"))[0]) is None
    with pytest.raises(ConvformerError, match="no such audio file"):
        band_limit(tmp_path / "missing.wav")


@needs_fsdd
def test_training_on_several_manifests_of_mixed_rates(tmp_path):
    data = small_corpus(tmp_path / "data", train=3, val=2)
    real = tmp_path / "fsdd"
    paths = fsdd_manifests(FSDD, real, held_out=("theo",))
    few = [line for line in paths["val"].read_text().splitlines()[:3]]
    (real / "few.jsonl").write_text("\n".join(few) + "\n")
    cfg = AsrTrainConfig(data=str(data), train_manifest=f"train.jsonl,{real / 'few.jsonl'}", epochs=1,
                         batch_size=3, threads=1, output=str(tmp_path), name="mixed")
    train(cfg, progress=False, log=lambda *_: None)
    config = json.loads((tmp_path / "mixed" / "config.json").read_text())
    assert config["train_utterances"] == 6 and config["narrowband_utterances"] == {"train": 3, "val": 0}


@needs_fsdd
def test_narrowband_benchmark_runs_both_arms_on_a_tiny_budget(tmp_path):
    from conftest import load_benchmark
    script = load_benchmark("asr_narrowband")
    report = script.run(["masked", "unmasked"], epochs=1, held_out="theo", model="conformer_ctc_xs", threads=1,
                        work=tmp_path, limit=4)
    assert [r["arm"] for r in report["results"]] == ["masked", "unmasked"]
    for r in report["results"]:
        assert r["heldout_default"]["utterances"] == r["heldout_zero_lookahead"]["utterances"] == 4
        assert r["heldout_zero_lookahead"]["context"] == [32, 0]
    assert "| masked |" in script.markdown(report)
