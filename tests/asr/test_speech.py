"""Speech front end (mel scale, filterbank, log-mel features), audio files, CTC decoding and error rates."""
import numpy as np
import pytest
import torch

from convformer.asr.data import (CharVocabulary, FrontendConfig, LogMelFrontend, SpecAugment, hz_to_mel,
                                    load_audio, mel_filterbank, mel_to_hz)
from convformer.asr.ctc import StreamingGreedyDecoder, edit_distance, error_rates, greedy_decode
from convformer.errors import ConvformerError


def test_slaney_mel_scale_textbook_points():
    # Slaney's Auditory Toolbox: 3 mels per 200 Hz up to 1 kHz (= 15 mels), then 27 mels per factor 6.4
    assert hz_to_mel(200.0) == pytest.approx(3.0)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(42.0)
    f = np.array([0.0, 123.0, 999.0, 1500.0, 7999.0])
    assert np.allclose(mel_to_hz(hz_to_mel(f)), f)


def test_filterbank_triangles_have_unit_area_and_peak_at_their_centres():
    fb = mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and (fb >= 0).all()
    bin_hz = 16000 / 512
    edges = mel_to_hz(np.linspace(0, hz_to_mel(8000.0), 42))
    for m in range(10, 40):  # filters wide enough to be sampled well by 31.25 Hz bins
        assert fb[m].sum() * bin_hz == pytest.approx(1.0, rel=0.05)
        assert abs(np.argmax(fb[m]) * bin_hz - edges[m + 1]) <= bin_hz


def test_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa", reason="librosa is not installed (it comes with the nemo extra)")
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0, fmax=8000, norm="slaney", htk=False)
    assert np.allclose(mel_filterbank(16000, 512, 80), ref, atol=1e-7)


def test_log_mel_frames_normalisation_and_padding():
    fe = LogMelFrontend().eval()
    torch.manual_seed(0)
    audio = torch.randn(2, 16000) * 0.1
    audio[1, 9123:] = 0
    feats, frames = fe(audio, torch.tensor([16000, 9123]))
    assert frames.tolist() == [100, 57] and feats.shape == (2, 100, 80)
    valid = feats[1, :57]
    assert torch.allclose(valid.mean(0), torch.zeros(80), atol=1e-4)
    assert torch.allclose(valid.std(0), torch.ones(80), atol=1e-3)
    assert (feats[1, 57:] == 0).all()
    alone, _ = fe(audio[1:, :9123])
    assert torch.allclose(alone[0], feats[1, :57], atol=1e-4)


def test_a_tone_lights_the_mel_band_around_its_frequency():
    fe = LogMelFrontend(FrontendConfig(normalize="none", preemph=0.0)).eval()
    t = torch.arange(16000) / 16000
    feats, _ = fe(torch.sin(2 * torch.pi * 1000 * t))
    edges = mel_to_hz(np.linspace(0, hz_to_mel(8000.0), 82))
    band = int(feats[0, 10:90].mean(0).argmax())
    assert edges[band] < 1000 < edges[band + 2]


def test_specaugment_masks_only_in_training():
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=3, time_width=0.1)
    x = torch.ones(2, 100, 80)
    torch.manual_seed(0)
    masked = aug.train()(x, torch.tensor([100, 50]))
    assert (masked == 0).any()
    # time masks stay inside each utterance: beyond frame 50 of the second, only the (per-utterance
    # constant) frequency bands are zeroed, so those frames are all alike and not all zero
    tail = masked[1, 50:]
    assert (tail == tail[0]).all() and (tail[0] != 0).any()
    assert torch.equal(aug.eval()(x, torch.tensor([100, 50])), x)


def test_load_audio_resamples_and_rejects_bad_files(tmp_path):
    sf = pytest.importorskip("soundfile")
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "tone.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    sf.write(tmp_path / "tone.flac", np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1).astype(np.float32) * 0.5, 8000)
    for name in ("tone.wav", "tone.flac"):
        audio = load_audio(tmp_path / name, 16000)
        assert audio.shape == (16000,)
        spectrum = np.abs(np.fft.rfft(audio.numpy()))
        assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s at 16 kHz: bin k is k Hz
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ConvformerError, match="not a readable audio file"):
        load_audio(tmp_path / "bad.wav")
    with pytest.raises(ConvformerError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")


def test_char_vocabulary_round_trip():
    vocab = CharVocabulary()
    assert len(vocab) == 28
    assert vocab.normalize("Hello,  World! It's 42") == "hello world it's"
    assert vocab.decode(vocab.encode("Hello, World")) == "hello world"


def test_greedy_decode_merges_runs_and_drops_blanks():
    blank = 3
    frames = torch.tensor([[0, 0, 3, 0, 1, 1, 3, 3, 2, 2]])
    logp = torch.nn.functional.one_hot(frames, 4).float().log_softmax(-1)
    assert greedy_decode(logp, torch.tensor([10]), blank) == [[0, 0, 1, 2]]
    assert greedy_decode(logp, torch.tensor([5]), blank) == [[0, 0, 1]]


def test_streaming_greedy_equals_offline_across_chunk_boundaries():
    torch.manual_seed(0)
    logp = torch.randn(3, 40, 5).log_softmax(-1)
    logp[:, 10:14, 2] = 5.0  # a run that straddles the chunk boundary at frame 12
    lengths = torch.tensor([40, 33, 12])
    offline = greedy_decode(logp, lengths, blank=4)
    dec = StreamingGreedyDecoder(3, blank=4)
    for s in range(0, 40, 12):
        pos = torch.arange(s, min(s + 12, 40))
        dec.push(logp[:, s:s + 12], pos.unsqueeze(0) < lengths.unsqueeze(1))
    assert dec.tokens == offline


def test_error_rates():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    r = error_rates(["one two three", "four"], ["one too three", "four five"])
    assert r["wer"] == pytest.approx(2 / 4)
    assert r["cer"] == pytest.approx((1 + 5) / (13 + 4))
