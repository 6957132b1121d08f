"""The hybrid CTC/RNN-T Conformer: registered with exact counts, it is a CTC model with a transducer beside,
trains through the engine with the weighted loss, resumes exactly, and validates with either head."""
import json

import pytest
import torch

import convformer
from convformer.asr.config import AsrTrainConfig
from convformer.asr.hybrid import ConformerHybrid
from convformer.asr.task import SpeechRecognition, ctc_loss
from convformer.asr.transducer import greedy_transducer_decode, rnnt_loss
from convformer.engine.train import train
from convformer.errors import ConvformerError
from convformer.weights import read_state_dict

from conftest import Crash, crash_at
from test_asr import small_corpus


def test_hybrid_is_the_ctc_model_plus_a_transducer():
    torch.manual_seed(0)
    hybrid = convformer.create_model("conformer_hybrid_xs").eval()
    ctc = convformer.create_model("conformer_ctc_xs").eval()
    assert isinstance(hybrid, ConformerHybrid)
    own = {k: v for k, v in hybrid.state_dict().items() if not k.startswith(("prediction.", "joint."))}
    assert own.keys() == ctc.state_dict().keys()
    ctc.load_state_dict(own)
    x, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    with torch.no_grad():
        a, la = hybrid(x, lengths)
        b, lb = ctc(x, lengths)
        assert torch.equal(a, b) and torch.equal(la, lb)
        targets = torch.tensor([[1, 2, 3], [4, 5, -1]])
        _, _, lp = hybrid(x, lengths, targets)
    assert lp.shape == (2, a.shape[1], 4, 29) and torch.allclose(lp.exp().sum(-1), torch.ones(()), atol=1e-5)
    with torch.no_grad():
        frames, flen = hybrid.encoder(x, lengths)
    assert hybrid.transducer_decode(x, lengths) == greedy_transducer_decode(hybrid.prediction, hybrid.joint,
                                                                           frames, flen)


def test_task_loss_is_the_weighted_sum_of_both_losses():
    torch.manual_seed(0)
    model = convformer.create_model("conformer_hybrid_xs")
    task = SpeechRecognition()
    task.hybrid, task.blank, task.ctc_weight = True, 28, 0.25
    x, lengths = torch.randn(2, 100, 80), torch.tensor([100, 80])
    labels, label_lengths = torch.tensor([[1, 2, 3], [4, 5, -1]]), torch.tensor([3, 2])
    out = model(x, lengths, labels)
    expected = 0.25 * ctc_loss(out[0], out[1], labels, label_lengths, 28) + \
        0.75 * rnnt_loss(out[2], labels.clamp(min=0), out[1], label_lengths, reduction="none").mean()
    assert task.loss(out, (labels, label_lengths)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_hybrid_trains_resumes_exactly_and_validates_with_either_head(tmp_path, monkeypatch):
    data = small_corpus(tmp_path / "data", train=4, val=2)
    common = dict(model="conformer_hybrid_xs", data=str(data), batch_size=2, epochs=2, checkpoint_every=1,
                  threads=1, output=str(tmp_path))
    result = train(AsrTrainConfig(name="ref", **common), progress=False, log=lambda *_: None)
    rows = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert len(rows) == 2 and all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in rows)
    assert result["metric"] == "cer" and result["val_cer"] is not None
    with monkeypatch.context() as patch:
        crash_at(patch, SpeechRecognition, 3)
        with pytest.raises(Crash):
            train(AsrTrainConfig(name="run", **common), progress=False, log=lambda *_: None)
    train(AsrTrainConfig(resume=str(tmp_path / "run"), threads=1), progress=False, log=lambda *_: None,
          given={"resume", "threads"})
    ref, resumed = read_state_dict(tmp_path / "ref" / "last.safetensors")[0], \
        read_state_dict(tmp_path / "run" / "last.safetensors")[0]
    assert any(k.startswith("joint.") for k in ref) and all(torch.equal(ref[k], resumed[k]) for k in ref)
    # the CTC head validates the same weights too
    ctc_run = train(AsrTrainConfig(name="ctc", decoder="ctc", **{**common, "epochs": 1}), progress=False,
                    log=lambda *_: None)
    assert ctc_run["val_cer"] is not None
    with pytest.raises(ConvformerError, match="--decoder"):
        train(AsrTrainConfig(name="bad", decoder="rnnt", **{**common, "model": "conformer_ctc_xs"}), progress=False,
              log=lambda *_: None)


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    data = small_corpus(root / "data", train=6, val=3)
    train(AsrTrainConfig(model="conformer_hybrid_xs", data=str(data), epochs=3, batch_size=3, lr=3e-3,
                         warmup_epochs=0.5, spec_augment=False, threads=1, output=str(root), name="h"),
          progress=False, log=lambda *_: None)
    # a few epochs leave the RNN-T head emitting (almost) only blanks; lower the blank's bias so that the
    # transcripts compared below are long, and a decoder that lost its state between chunks would differ
    state, meta = read_state_dict(root / "h" / "last.safetensors")
    state["joint.net.2.bias"][-1] -= 4.0
    from convformer.weights.io import save_state_dict
    save_state_dict(state, root / "emits.safetensors", meta)
    return {"data": data, "weights": str(root / "emits.safetensors")}


def test_streamed_rnnt_transcripts_equal_offline_through_the_cli(hybrid_run, tmp_path, capsys):
    from convformer.cli import main
    out = tmp_path / "eval.json"
    assert main(["asr", "eval", hybrid_run["weights"], "--data", str(hybrid_run["data"]), "--stream",
                 "--decoder", "rnnt", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["decoder"] == "rnnt" and report["identical_transcripts"] == report["offline"]["utterances"] == 3
    assert all(t["offline"] == t["streaming"] for t in report["transcripts"])
    assert sum(len(t["offline"]) for t in report["transcripts"]) > 20
    capsys.readouterr()
    assert main(["asr", "eval", hybrid_run["weights"], "--data", str(hybrid_run["data"]), "--decoder", "ctc",
                 "--output", str(tmp_path / "ctc.json")]) == 0
    assert json.loads((tmp_path / "ctc.json").read_text())["decoder"] == "ctc"


def test_transcribe_streams_the_rnnt_head_to_the_offline_transcript(hybrid_run, capsys):
    from convformer.cli import main
    wav = str(sorted((hybrid_run["data"] / "test").glob("*.flac"))[1])
    assert main(["asr", "transcribe", wav, "--weights", hybrid_run["weights"]]) == 0
    offline = capsys.readouterr().out.splitlines()[0][len(wav) + 2:]
    assert len(offline) > 5
    assert main(["asr", "transcribe", wav, "--weights", hybrid_run["weights"], "--stream"]) == 0
    final = [line for line in capsys.readouterr().out.splitlines() if "final:" in line][0]
    assert final.split("final: ", 1)[1] == offline


@pytest.mark.slow
def test_export_cli_puts_the_rnnt_decoder_in_the_step_graph(hybrid_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from convformer.cli import main
    assert main(["export", str(tmp_path / "step.onnx"), "--weights", hybrid_run["weights"]]) == 0
    said = capsys.readouterr().out
    assert "RNN-T tokens + decoder state" in said and (tmp_path / "step.onnx").is_file()
    assert main(["export", str(tmp_path / "ctc.onnx"), "--weights", hybrid_run["weights"], "--decoder", "ctc"]) == 0
    assert "log-probs" in capsys.readouterr().out


def test_rnnt_decoder_on_a_ctc_model_is_a_one_line_error(tmp_path, capsys):
    from convformer.cli import main
    model = convformer.create_model("conformer_ctc_xs")
    weights = convformer.save_weights(model, tmp_path / "w.safetensors",
                                      metadata={"vocabulary": '{"chars": " abcdefghijklmnopqrstuvwxyz\'"}'})
    assert main(["asr", "transcribe", "x.wav", "--weights", str(weights), "--decoder", "rnnt"]) == 2
    assert "--decoder" in capsys.readouterr().err


def _small_hybrid(name="conformer_hybrid_xs", shift=2.0, seed=0):
    """A small hybrid with random weights whose blank bias is raised so that some frames emit and some not."""
    torch.manual_seed(seed)
    model = convformer.create_model(name, n_layers=2, d_model=32, pred_hidden=24, joint_hidden=20).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    with torch.no_grad():
        model.joint.net[2].bias[-1] += shift
    return model


def test_static_greedy_chunk_equals_the_greedy_decoder_across_ragged_chunks():
    from convformer.asr.transducer import GreedyTransducerDecoder, greedy_chunk_static
    from convformer.asr.stream_onnx import initial_decoder_state
    model = _small_hybrid()
    frames = torch.randn(3, 12, 32)
    valid = torch.arange(12)[None] < torch.tensor([12, 7, 0])[:, None]   # one stream ends early, one never starts
    reference = GreedyTransducerDecoder(model.prediction, model.joint, 3, max_symbols=4)
    g, h, c = initial_decoder_state(model, 3)
    got = [[], [], []]
    with torch.no_grad():
        for start in (0, 5, 9):                                           # chunks of 5, 4 and 3 frames
            part = slice(start, {0: 5, 5: 9, 9: 12}[start])
            reference.feed(frames[:, part], valid[:, part])
            tokens, g, h, c = greedy_chunk_static(model.prediction, model.joint, frames[:, part], valid[:, part],
                                                  g, h, c, max_symbols=4)
            for row, t in zip(got, tokens.tolist()):
                row += [x for x in t if x >= 0]
    assert got == reference.tokens and len(got[0]) > 0 and got[2] == []


@pytest.mark.parametrize("name", ["conformer_hybrid_xs", "conformer_transducer_xs"])
def test_onnx_streaming_step_carries_the_rnnt_decoder(tmp_path, name, monkeypatch):
    pytest.importorskip("onnxruntime")
    from convformer.asr import stream_onnx
    from convformer.asr.transducer import GreedyTransducerDecoder
    model = _small_hybrid(name, shift=0.5)
    result = stream_onnx.export_stream_step(model, tmp_path / "step.onnx", decoder="auto", max_symbols=3)
    assert result["decoder"] == "rnnt" and result["max_abs_diff"] < 1e-4 and (tmp_path / "step.onnx").is_file()
    assert 0 < result["tokens_checked"] < 2 * 3 * 24   # some frames emit, not every try of every frame
    # a graph whose tokens differ from PyTorch's decoder must be caught (and nothing written)
    real_feed = GreedyTransducerDecoder.feed

    def one_more(self, frames, lengths=None):
        new = real_feed(self, frames, lengths)
        self.tokens[0].append(0)
        return new
    monkeypatch.setattr(GreedyTransducerDecoder, "feed", one_more)
    with pytest.raises(ConvformerError, match="differs from PyTorch"):
        stream_onnx.export_stream_step(model, tmp_path / "bad.onnx", decoder="rnnt", max_symbols=3)
    assert not (tmp_path / "bad.onnx").exists()
    if name == "conformer_transducer_xs":
        with pytest.raises(ConvformerError, match="no CTC head"):
            stream_onnx.export_stream_step(model, tmp_path / "ctc.onnx", decoder="ctc")
