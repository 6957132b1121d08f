"""Real recordings (FSDD, ../shared/data): manifests split by speaker, narrowband (8 kHz) audio handled in
the features, and several manifests of mixed sample rates in one training run."""
import json
import math
from pathlib import Path

import pytest
import torch

import convformer

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
def test_narrowband_audio_has_its_empty_bands_masked_on_request():
    """8 kHz audio has nothing above 4 kHz; without the mask, per-band normalisation turns those bands into
    unit-variance noise. With it they are exactly 0, and the bands below are untouched."""
    wav = sorted(FSDD.glob("*.wav"))[0]
    assert band_limit(wav) == 4000.0
    wave, limit = load_audio(wav, with_limit=True)   # the same answer from the one read
    assert limit == 4000.0 and torch.equal(wave, load_audio(wav))
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
    from convformer.asr.task import load_asr
    assert load_asr(str(tmp_path / "mixed" / "best.safetensors"))[0].narrowband == "keep"  # the default
    with pytest.raises(ConvformerError, match="--narrowband must be keep or mask"):
        train(AsrTrainConfig(data=str(data), narrowband="drop", epochs=1, threads=1, output=str(tmp_path), name="x"),
              progress=False, log=lambda *_: None)


@needs_fsdd
def test_real_voice_benchmark_runs_its_arms_on_a_tiny_budget(tmp_path):
    from conftest import load_benchmark
    script = load_benchmark("asr_real_voices")
    report = script.run(["masked", "speed_noise", "hybrid"], epochs=1, held_out="theo", threads=1, work=tmp_path,
                        limit=4)
    rows = report["results"]
    assert [r["arm"] for r in rows] == ["masked", "speed_noise", "hybrid"]
    assert [r["model"] for r in rows] == ["conformer_ctc_xs", "conformer_ctc_xs", "conformer_hybrid_xs"]
    for r in rows:
        assert r["heldout_default"]["utterances"] == r["heldout_zero_lookahead"]["utterances"] == 4
        assert r["heldout_zero_lookahead"]["context"] == [32, 0] and len(r["val_cer_by_epoch"]) == 1
    assert "| speed_noise | conformer_ctc_xs | 0 |" in script.markdown(report)
    # a second run with another arm extends the report; the same arm and seed replaces its row
    again = script.run(["masked"], epochs=1, held_out="theo", threads=1, work=tmp_path / "again", limit=4)
    merged = script.merge(report, again)
    assert [r["arm"] for r in merged["results"]] == ["speed_noise", "hybrid", "masked"]
    with pytest.raises(SystemExit, match="unknown arms"):
        script.run(["louder"], epochs=1, held_out="theo", threads=1, work=tmp_path, limit=4)


def test_speed_perturbation_resamples_and_noise_meets_its_snr():
    from convformer.asr.data import WaveAugment
    wave = torch.sin(torch.arange(16000) * 0.05)
    assert len(WaveAugment.change_speed(wave, 1.1)) == math.ceil(16000 / 1.1)   # 10 / 11 of the samples
    assert len(WaveAugment.change_speed(wave, 0.9)) == math.ceil(16000 / 0.9)
    torch.manual_seed(0)
    fast_only = WaveAugment(speeds=(1.1,))
    assert len(fast_only(wave)) == math.ceil(16000 / 1.1)
    assert len(fast_only(wave, fastest=1.0)) == 16000  # too short to speed up: plays at 1x
    noisy = WaveAugment(speeds=(1.0,), noise=1.0, snr_db=(20.0, 20.0))(wave)
    snr = 10 * torch.log10(wave.pow(2).mean() / (noisy - wave).pow(2).mean())
    assert abs(float(snr) - 20.0) < 0.01
    with pytest.raises(ConvformerError, match="noise probability"):
        WaveAugment(noise=2.0)


def test_gain_changes_normalised_features_only_near_the_log_guard():
    """Per-band normalisation removes a gain's constant log offset, except where the power is near the log
    guard (2^-24): wideband noise barely changes, speech with digital silence does."""
    from convformer.asr.task import BUNDLED
    frontend = LogMelFrontend(FrontendConfig()).eval()
    torch.manual_seed(0)
    noise = torch.randn(16000) * 0.1
    assert (frontend(noise * 0.5)[0] - frontend(noise)[0]).abs().mean() < 1e-3
    speech = load_audio(sorted((BUNDLED / "test").glob("*.flac"))[0])
    assert (frontend(speech * 0.5)[0] - frontend(speech)[0]).abs().mean() > 0.01


def test_augmented_items_are_drawn_afresh_and_repeatably(tmp_path):
    """With speed perturbation and noise the features are computed per item from the waveform, from torch's
    generator (which the engine seeds): the same seed gives the same item, the next draw another."""
    from convformer.asr.task import SpeechRecognition
    data = small_corpus(tmp_path / "data", train=4, val=2)
    cfg = AsrTrainConfig(data=str(data), speed_perturb=True, noise=1.0, epochs=1, batch_size=2, threads=1,
                         output=str(tmp_path), name="aug")
    built = SpeechRecognition().build(cfg, progress=False)
    train_set = built.train
    assert train_set.features[0] is None and len(train_set.waves) == 4
    torch.manual_seed(0)
    a = train_set[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, train_set[0][0])
    assert not torch.equal(a, train_set[0][0])
    assert not built.val.waves and built.val.features[0] is not None  # validation is never augmented


def test_buffered_streaming_equals_offline_only_with_the_whole_utterance_in_view():
    from convformer.asr.streaming import BufferedStreaming
    torch.manual_seed(0)
    model = convformer.create_model("conformer_ctc_xs", n_layers=2, att_context=[[-1, -1]], att_context_style="regular",
                                    causal_conv=False, causal_subsampling=False).eval()
    feats = torch.randn(203, 80)
    with torch.no_grad():
        offline, _ = model.encoder(feats[None])
        whole = BufferedStreaming(model.encoder, chunk=32, left=400, right=400).run(feats)
        short = BufferedStreaming(model.encoder, chunk=32, left=32, right=0).run(feats)
    assert whole.shape == offline.shape == short.shape
    assert torch.allclose(whole, offline, atol=1e-5)
    assert not torch.allclose(short, offline, atol=1e-2)   # a truncated window changes the frames
    with pytest.raises(ConvformerError, match="multiples of the subsampling factor"):
        BufferedStreaming(model.encoder, chunk=30, left=32)


@pytest.mark.slow
@needs_fsdd
def test_latency_benchmark_runs_on_tiny_models(tmp_path):
    from conftest import load_benchmark
    voices, latency = load_benchmark("asr_real_voices"), load_benchmark("asr_latency")
    voices.run(["ctc", "full_context", "single_32_7", "single_32_3", "single_32_0"], epochs=1, held_out="theo",
               threads=1, work=tmp_path, limit=2)
    report = latency.run(tmp_path, tmp_path / "manifests" / "heldout.jsonl", threads=1, timing_limit=1,
                         heldout_limit=2)
    rows = report["results"]
    assert len(rows) == 1 + 3 * 4 and rows[0]["setting"] == "offline"
    assert {r["system"] for r in rows[1:]} == {"cache-aware, multi-latency model", "cache-aware, single-latency model",
                                               "buffered full-context model",
                                               "buffered full-context model, +320 ms look-ahead",
                                               "buffered full-context model, +160 ms look-ahead",
                                               "buffered full-context model, +40 ms look-ahead"}
    assert all(r["utterances"] == 2 and r["compute_s_per_audio_s"] > 0 for r in rows)
    assert "| [32,0] | buffered full-context model | 40 | 40 |" in latency.markdown(report)
