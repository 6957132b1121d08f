"""Live recognition: the causal front end equals the offline one on the same samples, and the multi-stream
recognizer gives every stream the transcript offline decoding gives it alone."""
import numpy as np
import pytest
import torch

from convformer.asr.data import FrontendConfig, LogMelFrontend, load_audio
from convformer.asr.live import LiveError, LiveRecognizer
from convformer.asr.live_frontend import (CausalLogMel, FeatureNorm, RunningNorm, StreamingFrontend,
                                          feature_stats, normalize_features)
from convformer.asr.pretrained import SHIPPED
from convformer.asr.streaming import StreamingConformer, StreamState
from convformer.asr.task import BUNDLED, decode_batch, load_asr
from convformer.errors import ConvformerError

from test_real_voices import FSDD, needs_fsdd  # noqa: F401

RAW = LogMelFrontend(FrontendConfig(normalize="none")).eval()


@pytest.fixture(scope="module")
def real_wave():
    files = sorted(FSDD.glob("*.wav"))
    if not files:
        pytest.skip(f"the FSDD recordings are not in {FSDD}")
    return torch.cat([load_audio(files[0]), load_audio(files[1])])   # two real voices, one after the other


@pytest.fixture(scope="module")
def stats():
    waves = [load_audio(p) for p in sorted((BUNDLED / "train").glob("*.flac"))[:40]]
    return feature_stats(RAW(w)[0][0] for w in waves)


@pytest.fixture(scope="module")
def shipped():
    return load_asr(str(SHIPPED))


def _stream(frontend, wave, sizes, rng):
    out, pos = [], 0
    while pos < wave.numel():
        n = int(rng.choice(sizes))
        out.append(frontend.push(wave[pos:pos + n]))
        pos += n
    out.append(frontend.finish())
    return torch.cat(out)


@pytest.mark.parametrize("mode", ["fixed", "running"])
@pytest.mark.parametrize("sizes", [(1, 7, 160), (333,), (4000, 17)])
def test_streaming_front_end_equals_the_offline_one(real_wave, stats, mode, sizes):
    norm = FeatureNorm(mode, *stats)
    want, frames = CausalLogMel(norm)(real_wave)
    got = _stream(StreamingFrontend(norm), real_wave, sizes, np.random.default_rng(0))
    assert got.shape == want[0].shape and got.shape[0] == int(frames) == real_wave.numel() // 160
    torch.testing.assert_close(got, want[0], rtol=0, atol=2e-4)


def test_causal_log_mels_are_the_offline_front_ends_before_normalising(real_wave, stats):
    """With fixed statistics the causal features are the offline log-mels, normalised by the stored stats."""
    raw = RAW(real_wave)[0][0]
    mean, std = torch.tensor(stats[0]), torch.tensor(stats[1])
    got = CausalLogMel(FeatureNorm("fixed", *stats))(real_wave)[0][0]
    torch.testing.assert_close(got, (raw - mean) / (std + 1e-5))
    # and per-utterance normalisation is untouched
    torch.testing.assert_close(CausalLogMel()(real_wave)[0], LogMelFrontend(FrontendConfig()).eval()(real_wave)[0])


def test_running_norm_uses_only_the_frames_so_far(stats):
    torch.manual_seed(0)
    mel = torch.randn(50, 80, dtype=torch.float64) * 3 + 7
    norm = FeatureNorm("running", *stats, prior=10.0)
    got = torch.cat([RunningNorm(norm)(mel[:20]), torch.zeros(0, 80, dtype=torch.float64)])  # one piece
    split = RunningNorm(norm)
    got2 = torch.cat([split(mel[:7]), split(mel[7:20])])
    mean0, var0 = torch.tensor(stats[0], dtype=torch.float64), torch.tensor(stats[1], dtype=torch.float64) ** 2
    for t in (0, 6, 19):
        seen = mel[:t + 1]
        w = 10.0 + t + 1
        mean = (10.0 * mean0 + seen.sum(0)) / w
        var = (10.0 * (var0 + mean0 ** 2) + (seen ** 2).sum(0)) / w - mean ** 2
        torch.testing.assert_close(got[t], (mel[t] - mean) / (var.sqrt() + 1e-5))
    torch.testing.assert_close(got, got2)
    # frames after t never change frame t
    torch.testing.assert_close(normalize_features(mel, norm)[:20], got)


def test_feature_stats_are_the_mean_and_deviation_of_every_frame():
    torch.manual_seed(1)
    parts = [torch.randn(n, 4) * 2 + 100 for n in (3, 10, 1)]
    mean, std = feature_stats(parts)
    every = torch.cat(parts).double()
    np.testing.assert_allclose(mean, every.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, every.std(0), rtol=1e-5)


def test_causal_normalisation_needs_statistics_and_live_needs_a_causal_one():
    with pytest.raises(ConvformerError, match="needs feature statistics"):
        FeatureNorm("fixed")
    with pytest.raises(ConvformerError, match="causal normalisation"):
        StreamingFrontend(FeatureNorm())
    with pytest.raises(ConvformerError, match="use one of"):
        FeatureNorm("global", (0.0,), (1.0,))


def test_audio_after_finish_is_refused(stats):
    fe = StreamingFrontend(FeatureNorm("fixed", *stats))
    fe.push(torch.zeros(1000))
    fe.finish()
    with pytest.raises(ConvformerError, match="after the end"):
        fe.push(torch.zeros(10))


def test_states_batch_and_split_without_changing_a_stream(shipped):
    model, _ = shipped
    s = StreamingConformer(model.encoder)
    torch.manual_seed(0)
    feats = torch.randn(3, s.min_chunk(), 80)
    _, _, st = s.step(feats, s.initial_state(3))
    again = StreamState.cat([st.row(2), st.row(0), st.row(1)])
    for got, want in zip((again.keys[:, 0], again.conv[:, 1], again.features[2]),
                         (st.keys[:, 2], st.conv[:, 0], st.features[1])):
        torch.testing.assert_close(got, want)
    with pytest.raises(ConvformerError, match="same model"):
        other = s.initial_state(1)
        other.signature = "x"
        StreamState.cat([st.row(0), other])


def _offline(model, vocab, wave, norm, decoder):
    feats, n = CausalLogMel(norm)(wave)
    return decode_batch(model, vocab, feats, torch.tensor([int(n)]), decoder=decoder)[0]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("decoder", ["rnnt", "ctc"])
def test_live_streams_get_their_offline_transcripts(shipped, stats, batched, decoder):
    """Streams of different lengths join at different ticks, push audio in uneven pieces and end at
    different times; each final transcript is offline decoding of its audio with the same front end."""
    model, vocab = shipped
    norm = FeatureNorm("running", *stats)
    waves = [load_audio(p) for p in sorted((BUNDLED / "test").glob("*.flac"))[:4]]
    live = LiveRecognizer(model, vocab, norm, decoder=decoder, batched=batched)
    rng = np.random.default_rng(0)
    pos = [0] * 4
    finals, partials, sizes = {}, {}, set()
    for tick in range(10_000):
        for i, w in enumerate(waves):
            if tick < 3 * i:                     # stream i joins at tick 3i
                continue
            if i not in live.streams and pos[i] == 0:
                live.open(i)
            if i in live.streams and pos[i] < w.numel():
                n = int(rng.integers(200, 3000))
                live.feed(i, w[pos[i]:pos[i] + n])
                pos[i] += n
                if pos[i] >= w.numel():
                    live.end(i)
        for e in live.tick():
            (finals if e["type"] == "final" else partials).setdefault(e["stream"], []).append(e)
        if live.batch_sizes:
            sizes.add(live.batch_sizes[-1])
        if len(finals) == 4:
            break
    assert len(finals) == 4 and not live.streams
    for i, w in enumerate(waves):
        want = _offline(model, vocab, w, norm, decoder)
        assert finals[i][0]["text"] == want and want
        texts = [e["text"] for e in partials.get(i, [])]
        assert all(want.startswith(t) for t in texts) and (not texts or texts[-1] == want)   # partials grow
        ends = [e["end"] for e in partials.get(i, [])]
        assert ends == sorted(ends) and abs(finals[i][0]["seconds"] - w.numel() / 16000) < 1e-3
    assert max(sizes) > 1 and min(sizes) == 1     # streams overlapped, and some ticks had one stream alone
    # one model call per tick (batched), or one per stream per tick (the naive design)
    assert live.model_calls == (live.ticks if batched else sum(live.batch_sizes))


def test_live_refusals_name_the_problem(shipped, stats):
    model, vocab = shipped
    live = LiveRecognizer(model, vocab, FeatureNorm("fixed", *stats), max_streams=2, max_seconds=1.0,
                          max_backlog_seconds=0.5)
    live.open("a")
    live.open("b")
    with pytest.raises(LiveError, match="the server is full: 2 streams"):
        live.open("c")
    with pytest.raises(LiveError, match="already open"):
        live.open("a")
    with pytest.raises(LiveError, match="no open stream 'zz'"):
        live.feed("zz", torch.zeros(10))
    with pytest.raises(LiveError, match="longer than the 1 s limit"):
        live.feed("a", torch.zeros(17000))
    live.feed("b", torch.zeros(9000))   # 0.55 s waiting, no tick: the model is behind
    with pytest.raises(LiveError, match="behind this stream"):
        live.feed("b", torch.zeros(100))
    live.end("a")
    with pytest.raises(LiveError, match="after the end message"):
        live.feed("a", torch.zeros(10))
    with pytest.raises(LiveError, match="second end message"):
        live.end("a")


def test_silence_padding_keeps_the_utterance_and_adds_quiet_edges():
    from convformer.asr.data import WaveAugment
    torch.manual_seed(0)
    speech = torch.randn(8000) * 0.3
    aug = WaveAugment(speeds=(1.0,), pad_silence=0.5)
    seen_digital, seen_floor = False, False
    for _ in range(20):
        out = aug(speech)
        extra = out.numel() - speech.numel()
        assert 0 <= extra <= 2 * 8000
        starts = [i for i in range(extra + 1) if torch.equal(out[i:i + 8000], speech)]
        assert len(starts) == 1                                   # the utterance, untouched, once
        edges = torch.cat([out[:starts[0]], out[starts[0] + 8000:]])
        if edges.numel():
            level = float(edges.abs().max())
            assert level < 10 ** (-50 / 20) * 6                     # at most a quiet room (-50 dBFS, 6 sigma)
            seen_digital |= level == 0.0
            seen_floor |= level > 0.0
    assert seen_digital and seen_floor
    with pytest.raises(ConvformerError, match="pad-silence"):
        WaveAugment(pad_silence=-1)
