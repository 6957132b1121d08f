"""The streaming Conformer: offline masks, streaming equals offline, multi-latency, NeMo key layout, errors."""
import random

import pytest
import torch

import convformer
from convformer.errors import ConvformerError
from convformer.asr.conformer import ConformerConfig, ConformerCTC, context_allowed
from convformer.asr.streaming import StreamingConformer
from convformer.weights import load_weights
from convformer.asr.nemo import from_nemo, to_nemo

from conftest import load_benchmark, randomize_


def tiny(style="chunked_limited", context=(8, 3), subsampling="dw_striding", factor=8, seed=0, **kw):
    cfg = ConformerConfig(feat_in=16, d_model=32, n_layers=3, n_heads=4, ff_expansion=2, conv_kernel=5,
                          subsampling=subsampling, subsampling_factor=factor, subsampling_channels=8,
                          att_context=kw.pop("contexts", (context,)), att_context_style=style, dropout=0.0,
                          dropout_att=0.0, dropout_pre_encoder=0.0, vocab_size=6, **kw)
    torch.manual_seed(seed)
    return randomize_(ConformerCTC(cfg).eval())


def ragged_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 150, 16, generator=g), torch.tensor([150, 101, 37])


CASES = [  # style, context, subsampling, factor, chunk sizes in feature frames
    ("chunked_limited", (8, 3), "dw_striding", 8, (32, 64)),
    ("chunked_limited", (4, 1), "striding", 4, (8, 24)),
    ("regular", (6, 2), "striding", 4, (4, 12)),
    ("regular", (5, 0), "dw_striding", 8, (8, 40)),
]


@pytest.mark.parametrize("style,context,subsampling,factor,chunks", CASES)
def test_streaming_equals_offline(style, context, subsampling, factor, chunks):
    model = tiny(style, context, subsampling, factor)
    x, lengths = ragged_batch()
    with torch.no_grad():
        offline, off_len = model.encoder(x, lengths)
    stream = StreamingConformer(model.encoder)
    for chunk in chunks:
        y, y_len = stream.run(x, lengths, chunk)
        assert y_len.tolist() == off_len.tolist()
        for i in range(3):
            assert torch.allclose(y[i, :y_len[i]], offline[i, :off_len[i]], atol=1e-5, rtol=0)


def test_streams_at_different_positions_share_a_batch():
    model = tiny()
    stream = StreamingConformer(model.encoder)
    x, _ = ragged_batch()
    with torch.no_grad():
        want, _ = model.encoder(x[:1, :96])
    state = stream.initial_state(2)
    got = {0: [], 1: []}
    # row 0 starts now; row 1 runs another utterance for one chunk, then is reset and starts the same one
    chunks = [(x[:1, i:i + 32]) for i in range(0, 96, 32)] + [torch.zeros(1, 32, 16)]
    noise = torch.randn(1, 32, 16)
    for t in range(len(chunks) + 1):
        a = chunks[t] if t < len(chunks) else torch.zeros(1, 32, 16)
        b = noise if t == 0 else (chunks[t - 1] if t - 1 < len(chunks) else torch.zeros(1, 32, 16))
        if t == 1:
            state.reset([1])
        lens = torch.tensor([32 if t < 3 else 0, 32 if (t == 0 or 1 <= t <= 3) else 0])
        y, valid, state = stream.step(torch.cat([a, b]), state, lens)
        for row in (0, 1):
            if t >= 1 or row == 0:
                got[row].append(y[row][valid[row]])
    for row in (0, 1):
        out = torch.cat(got[row])
        assert torch.allclose(out, want[0], atol=1e-5, rtol=0), row


def test_utterance_alone_equals_padded_in_batch():
    model = tiny("regular", (6, 2), "striding", 4)
    x, lengths = ragged_batch()
    with torch.no_grad():
        batch, blen = model(x, lengths)
        alone, alen = model(x[2:, :37])
    assert alen.item() == blen[2].item()
    assert torch.allclose(alone[0], batch[2, :alen.item()], atol=1e-5)


def test_chunked_limited_mask_matches_its_definition():
    # REFERENCE.md: chunks of right+1 frames; a frame sees its whole chunk plus left // chunk previous chunks
    left, right = 7, 2
    pos = torch.arange(20)
    mask = context_allowed(pos, pos, (left, right), "chunked_limited")
    for q in range(20):
        for k in range(20):
            sees = q // 3 - left // 3 <= k // 3 <= q // 3
            assert bool(mask[q, k]) == sees
    regular = context_allowed(pos, pos, (4, 1), "regular")
    assert regular[10].nonzero().flatten().tolist() == [6, 7, 8, 9, 10, 11]


def test_look_ahead_is_bounded_and_does_not_grow_with_depth():
    model = tiny("chunked_limited", (8, 3), "dw_striding", 8)
    x = torch.randn(1, 200, 16)
    with torch.no_grad():
        base, _ = model.encoder(x)
        x2 = x.clone()
        x2[:, 100:] = torch.randn(1, 100, 16)  # change frames from encoder frame 12.5 on
        moved, _ = model.encoder(x2)
    changed = (base - moved).abs().amax(-1)[0] > 1e-6
    # encoder frame t needs features up to 8t; frames 0..11 end before feature 96, chunk 3 = frames 12..15
    assert not changed[:12].any() and changed[12:].all()


def test_multi_latency_samples_contexts_in_training_and_is_selectable():
    contexts = ((8, 3), (8, 1), (8, 0))
    model = tiny(contexts=contexts)
    model.train()
    random.seed(0)
    assert {model.encoder._training_context() for _ in range(60)} == set(contexts)
    model.eval()
    x = torch.randn(1, 96, 16)
    outs = []
    for c in contexts:
        model.encoder.set_context(c)
        with torch.no_grad():
            outs.append(model(x)[0])
        stream = StreamingConformer(model.encoder)
        y, _ = stream.run(x, None, stream.min_chunk() * 2)
        assert torch.allclose(y, model.encoder(x)[0], atol=1e-5)
    assert not torch.allclose(outs[0], outs[2])
    with pytest.raises(ConvformerError, match="not one this model was built with"):
        model.encoder.set_context((4, 4))


def test_stream_errors_are_clear():
    model = tiny()
    stream = StreamingConformer(model.encoder)
    state = stream.initial_state(1)
    with pytest.raises(ConvformerError, match="multiple of 32"):
        stream.step(torch.zeros(1, 24, 16), state)
    with pytest.raises(ConvformerError, match="expected a chunk"):
        stream.step(torch.zeros(1, 32, 15), state)
    other = StreamingConformer(tiny(context=(4, 3)).encoder)
    with pytest.raises(ConvformerError, match="another model"):
        other.step(torch.zeros(1, 32, 16), state)
    _, _, ended = stream.step(torch.zeros(1, 32, 16), state, torch.tensor([10]))
    with pytest.raises(ConvformerError, match="ended"):
        stream.step(torch.zeros(1, 32, 16), ended)
    with pytest.raises(ConvformerError, match="causal"):
        StreamingConformer(tiny(causal_conv=False).encoder)
    with pytest.raises(ConvformerError, match="finite left"):
        StreamingConformer(tiny("regular", (-1, 0)).encoder)
    with pytest.raises(ConvformerError, match="features"):
        model(torch.zeros(1, 16, 100))


def test_nemo_layout_round_trip_and_autodetect():
    model = tiny("regular", (6, 2), "striding", 4)
    nemo = to_nemo(model.state_dict(), "striding")
    assert "encoder.pre_encode.conv.2.weight" in nemo and "encoder.layers.0.self_attn.linear_pos.weight" in nemo
    assert nemo["decoder.decoder_layers.0.weight"].shape == (7, 32, 1)
    back = from_nemo(nemo, "striding")
    assert back.keys() == model.state_dict().keys()
    fresh = tiny("regular", (6, 2), "striding", 4, seed=5)
    assert load_weights(fresh, nemo) == "nemo"
    x = torch.randn(1, 64, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], model(x)[0])


def test_shared_position_biases_are_copied_to_every_layer():
    model = tiny()
    nemo = {k: v for k, v in to_nemo(model.state_dict(), "dw_striding").items() if "pos_bias" not in k}
    nemo["encoder.pos_bias_u"] = torch.full((4, 8), 0.5)
    nemo["encoder.pos_bias_v"] = torch.full((4, 8), -0.5)
    ours = from_nemo(nemo, "dw_striding")
    assert all(torch.equal(ours[f"encoder.layers.{i}.attn.bias_u"], nemo["encoder.pos_bias_u"]) for i in range(3))


def test_registered_sizes_build_and_stream():
    assert set(convformer.list_models(task="speech")) >= {"conformer_ctc_xs", "conformer_ctc_s", "conformer_ctc_m",
                                                          "fastconformer_ctc_s", "fastconformer_ctc_l"}
    card = convformer.model_card("fastconformer_ctc_l")
    assert "1040 ms" in " ".join(card.notes)  # [70, 13] at 80 ms frames: the 1.04 s of REFERENCE.md
    model = convformer.create_model("conformer_ctc_xs").eval()
    logp, lengths = model(torch.randn(2, 64, 80), torch.tensor([64, 40]))
    # causal subsampling: 64 -> 33 -> 17 frames (floor(n/2)+1 per stage), 40 -> 21 -> 11
    assert logp.shape == (2, 17, 29) and lengths.tolist() == [17, 11]
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 17), atol=1e-5)


def test_stream_speed_benchmark_runs_and_checks_parity(tmp_path):
    import json
    bench = load_benchmark("asr_stream_speed")
    out = tmp_path / "speed.json"
    bench.main(["--models", "conformer_ctc_xs", "--seconds", "1.3", "--chunks", "1", "--repeats", "1",
                "--output", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in rows] == ["cache", "buffered"]
    assert all(r["parity_streaming_vs_offline"] < 1e-5 and r["diff_vs_ours"] < 1e-5 for r in rows)
    assert rows[0]["steps"] == 4 and rows[0]["chunk_ms"] == 320  # 130 frames -> 4 chunks of 32
    assert (tmp_path / "speed.md").read_text().startswith("| model |")


def test_stream_speed_benchmark_times_the_transducer_decoder(tmp_path):
    import json
    bench = load_benchmark("asr_stream_speed")
    out = tmp_path / "speed.json"
    bench.main(["--models", "conformer_transducer_xs", "--seconds", "1.3", "--chunks", "1", "--repeats", "1",
                "--output", str(out)])
    rows = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert list(rows) == ["cache", "buffered", "cache+rnnt"]   # a transducer has no CTC head
    assert rows["cache+rnnt"]["same_tokens"] is True and rows["cache+rnnt"]["steps"] == 5  # + the last 2 frames


@pytest.mark.parametrize("argv,says", [
    (["train", "--model", "conformer_ctc_xs", "--epochs", "1"], "speech model; train it with"),
    (["export", "--model", "conformer_ctc_xs", "never.onnx", "--chunk-ms", "100"], "multiple of 320 ms"),
    (["bench", "conformer_ctc_xs"], "asr_stream_speed.py"),
])
def test_other_commands_handle_speech_models_in_one_line(argv, says, capsys, tmp_path, monkeypatch):
    from convformer.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in err
    assert not (tmp_path / "never.onnx").exists()


@pytest.mark.parametrize("style,context,subsampling,factor,chunk", [("chunked_limited", (8, 3), "dw_striding", 8, 64),
                                                                    ("regular", (6, 2), "striding", 4, 8)])
def test_stream_step_exports_to_onnx_with_caches_in_and_out(style, context, subsampling, factor, chunk, tmp_path):
    pytest.importorskip("onnxruntime")
    from convformer.export.onnx import onnx_session
    from convformer.asr.stream_onnx import export_stream_step
    model = tiny(style, context, subsampling, factor)
    result = export_stream_step(model, tmp_path / "step.onnx", chunk)
    assert result["max_abs_diff"] < 1e-4 and result["chunk"] == chunk
    session = onnx_session(tmp_path / "step.onnx")
    assert [i.name for i in session.get_inputs()] == ["features", "lengths", "feat_cache", "feat_pos", "feat_len",
                                                      "keys", "conv"]
    assert [o.name for o in session.get_outputs()][:3] == ["encoded", "log_probs", "valid"]
    # a tolerance nothing can meet: refused, and no file left behind
    with pytest.raises(ConvformerError, match="was not written"):
        export_stream_step(model, tmp_path / "never.onnx", chunk, atol=0.0)
    assert not (tmp_path / "never.onnx").exists()
