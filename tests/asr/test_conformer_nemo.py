"""Parity with NVIDIA NeMo's own ConformerEncoder: offline and its cache_aware_stream_step.

NeMo is heavy (Lightning, Hydra, transformers, ...), so it lives in the optional ``nemo`` extra and these
tests run under ``make test-nemo``; without NeMo they skip and say why. NeMo's module is built from a config,
given random weights, and ours gets the same weights through the NeMo key converter.
"""
import io
import tarfile

import pytest
import torch

from convformer.asr.conformer import ConformerCTC
from convformer.asr.streaming import StreamingConformer
from convformer.asr.nemo import config_from_nemo, config_to_nemo, conformer_from_nemo, from_nemo

from conftest import randomize_

conformer_encoder = pytest.importorskip(
    "nemo.collections.asr.modules.conformer_encoder",
    reason="NeMo is not installed (pip install -e '.[nemo]' or run `make test-nemo`)")
from convformer.asr.nemo_reference import build_nemo_encoder, nemo_cache_aware_stream  # noqa: E402

CONFIGS = [
    dict(subsampling="dw_striding", subsampling_factor=8, att_context_size=[16, 3], att_context_style="chunked_limited"),
    dict(subsampling="striding", subsampling_factor=4, att_context_size=[8, 2], att_context_style="regular"),
    dict(subsampling="dw_striding", subsampling_factor=4, att_context_size=[[12, 1], [12, 0]],
         att_context_style="chunked_limited"),
]


def nemo_pair(extra, seed=0):
    kw = dict(feat_in=20, n_layers=2, d_model=32, n_heads=4, subsampling_conv_channels=16, ff_expansion_factor=2,
              self_attention_model="rel_pos", conv_kernel_size=5, conv_context_size="causal",
              causal_downsampling=True, dropout=0.0, dropout_pre_encoder=0.0, dropout_emb=0.0, dropout_att=0.0,
              **extra)
    torch.manual_seed(seed)
    nemo = randomize_(conformer_encoder.ConformerEncoder(**kw).eval())
    ours = ConformerCTC(config_from_nemo(kw)).eval()
    state = from_nemo(nemo.state_dict(), kw["subsampling"])
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    return nemo, ours, kw


@pytest.mark.parametrize("extra", CONFIGS)
def test_offline_equals_nemo(extra):
    nemo, ours, _ = nemo_pair(extra)
    x = torch.randn(2, 20, 123)
    lengths = torch.tensor([123, 123])
    with torch.no_grad():
        want, want_len = nemo(audio_signal=x, length=lengths)
        got, got_len = ours.encoder(x.transpose(1, 2), lengths)
    assert got_len.tolist() == want_len.tolist()
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [CONFIGS[0], CONFIGS[2]])
def test_cache_aware_streaming_equals_nemo(extra):
    nemo, ours, _ = nemo_pair(extra, seed=3)
    x = torch.randn(1, 20, 200)
    want, _ = nemo_cache_aware_stream(nemo, x)
    stream = StreamingConformer(ours.encoder)
    got, got_len = stream.run(x.transpose(1, 2), None, stream.min_chunk() * 2)
    with torch.no_grad():
        offline, _ = ours.encoder(x.transpose(1, 2))
    n = want.shape[1]
    assert n >= offline.shape[1] - 1  # NeMo streams every frame it can compute
    assert torch.allclose(want[0], offline[0, :n], atol=1e-5, rtol=0)
    assert torch.allclose(got[0, :n], want[0], atol=1e-5, rtol=0)


def test_dot_nemo_archive_loads(tmp_path):
    import yaml
    nemo, ours, kw = nemo_pair(CONFIGS[0], seed=4)
    state = {f"encoder.{k}": v for k, v in nemo.state_dict().items()}
    state["decoder.decoder_layers.0.weight"] = torch.randn(7, 32, 1)
    state["decoder.decoder_layers.0.bias"] = torch.randn(7)
    config = {"encoder": kw, "decoder": {"num_classes": 6, "vocabulary": list("abcdef")}}
    path = tmp_path / "model.nemo"
    with tarfile.open(path, "w") as tar:
        for name, blob in (("model_config.yaml", yaml.safe_dump(config).encode()),
                           ("model_weights.ckpt", _saved(state))):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    model = conformer_from_nemo(path).eval()
    assert model.nemo_vocabulary == list("abcdef")
    x = torch.randn(1, 20, 96)
    with torch.no_grad():
        want, _ = nemo(audio_signal=x, length=torch.tensor([96]))
        got, _ = model.encoder(x.transpose(1, 2))
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5, rtol=0)


def _saved(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_log_mel_equals_nemo_preprocessor():
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor
    from convformer.asr.data import LogMelFrontend
    # the settings of NeMo's Conformer/FastConformer model configs (the class default window is 20 ms)
    pre = AudioToMelSpectrogramPreprocessor(sample_rate=16000, features=80, window_size=0.025, window_stride=0.01,
                                            n_fft=512, normalize="per_feature", dither=0.0, pad_to=0).eval()
    torch.manual_seed(0)
    audio = torch.randn(2, 16000) * 0.1
    audio[1, 9123:] = 0
    lengths = torch.tensor([16000, 9123])
    with torch.no_grad():
        want, want_len = pre(input_signal=audio, length=lengths)
        got, got_len = LogMelFrontend().eval()(audio, lengths)
    assert got_len.tolist() == want_len.tolist()
    assert torch.allclose(got, want.transpose(1, 2)[:, :got.shape[1]], atol=1e-4, rtol=0)


def test_our_model_exported_to_nemo_gives_our_outputs():
    import convformer
    torch.manual_seed(0)
    model = randomize_(convformer.create_model("conformer_ctc_xs", n_layers=2, dropout=0.0, dropout_att=0.0,
                                               dropout_pre_encoder=0.0)).eval()
    assert config_from_nemo(config_to_nemo(model.cfg)).att_context == model.cfg.att_context
    nemo = build_nemo_encoder(model)
    x = torch.randn(1, 80, 160)
    with torch.no_grad():
        want, _ = nemo(audio_signal=x, length=torch.tensor([160]))
        got, _ = model.encoder(x.transpose(1, 2))
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5, rtol=0)
