"""Speech recognition through the engine and the CLI: manifests, training, exact resume, eval, transcribe."""
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from convformer.cli import main
from convformer.asr.task import BUNDLED, SpeechRecognition, collate_utterances, read_manifest
from convformer.asr.config import AsrTrainConfig
from convformer.engine.train import train
from convformer.errors import ConvformerError
from convformer.weights import read_state_dict

from conftest import Crash, crash_at


def small_corpus(root: Path, train: int = 6, val: int = 3) -> Path:
    """A sliver of the bundled corpus: the first utterances of each split, copied with their manifests."""
    for split, n in (("train", train), ("test", val)):
        lines = (BUNDLED / f"{split}.jsonl").read_text().splitlines()[:n]
        (root / split).mkdir(parents=True)
        for line in lines:
            name = json.loads(line)["audio_filepath"]
            shutil.copy(BUNDLED / name, root / name)
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def asr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    data = small_corpus(root / "data")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["asr", "train", "--data", str(data), "--epochs", "2", "--batch-size", "3", "--threads", "1",
                     "--quiet", "--output", str(root / "runs"), "--name", "r"])
    return {"code": code, "stdout": out.getvalue(), "data": data, "run": root / "runs" / "r",
            "weights": str(root / "runs" / "r" / "best.safetensors")}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_manifest_errors_name_the_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"audio_filepath": "a.wav", "text": "hi"}\nnot json\n')
    with pytest.raises(ConvformerError, match=r"m.jsonl:2 is not JSON"):
        read_manifest(bad)
    bad.write_text('{"audio_filepath": "a.wav"}\n')
    with pytest.raises(ConvformerError, match=r"m.jsonl:1 needs both audio_filepath and text"):
        read_manifest(bad)
    with pytest.raises(ConvformerError, match="not found"):
        read_manifest(tmp_path / "missing.jsonl")
    bad.write_text('{"audio_filepath": "x/a.flac", "text": "hi"}\n')
    assert read_manifest(bad)[0]["audio_filepath"] == str(tmp_path / "x" / "a.flac")


def test_collate_pads_features_and_labels():
    items = [(torch.ones(5, 3), torch.tensor([1, 2]), 0), (torch.ones(2, 3), torch.tensor([3, 4, 5]), 1)]
    feats, lengths, labels, label_lengths, index = collate_utterances(items)
    assert feats.shape == (2, 5, 3) and (feats[1, 2:] == 0).all()
    assert lengths.tolist() == [5, 2] and label_lengths.tolist() == [2, 3] and index.tolist() == [0, 1]
    assert labels.tolist() == [[1, 2, -1], [3, 4, 5]]


def test_train_writes_a_run_with_the_vocabulary(asr_run):
    assert asr_run["code"] == 0
    assert "conformer_ctc_xs on " in asr_run["stdout"] and "val CER" in asr_run["stdout"]
    _, meta = read_state_dict(asr_run["weights"])
    assert meta["architecture"] == "conformer_ctc_xs"
    assert json.loads(meta["vocabulary"]) == {"chars": " abcdefghijklmnopqrstuvwxyz'"}
    rows = json.loads((asr_run["run"] / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_cer" in r and "val_wer" in r for r in rows)
    config = json.loads((asr_run["run"] / "config.json").read_text())
    assert config["task"] == "speech" and config["train_utterances"] == 6 and config["val_utterances"] == 3


def test_training_lowers_the_ctc_loss(tmp_path):
    data = small_corpus(tmp_path / "data", train=4, val=4)
    cfg = AsrTrainConfig(data=str(data), val_manifest="train.jsonl", epochs=12, batch_size=4, lr=3e-3,
                         warmup_epochs=1, spec_augment=False, threads=1, output=str(tmp_path / "runs"), name="fit")
    train(cfg, progress=False, log=lambda *_: None)
    rows = json.loads((tmp_path / "runs" / "fit" / "metrics.json").read_text())
    # the CTC plateau (all blanks) is long; 12 steps on 4 utterances must still move the loss clearly
    assert rows[-1]["val_loss"] < 0.9 * rows[0]["val_loss"]


def test_killed_run_resumes_to_bit_identical_weights(tmp_path, monkeypatch):
    # SpecAugment, speed perturbation, noise and dropout draw random numbers every step; the crash comes one
    # step after a checkpoint
    data = small_corpus(tmp_path / "data", train=4, val=2)
    common = dict(data=str(data), batch_size=2, epochs=2, checkpoint_every=1, threads=1, output=str(tmp_path),
                  speed_perturb=True, noise=0.5)
    train(AsrTrainConfig(name="ref", **common), progress=False, log=lambda *_: None)
    with monkeypatch.context() as patch:
        crash_at(patch, SpeechRecognition, 3)
        with pytest.raises(Crash):
            train(AsrTrainConfig(name="run", **common), progress=False, log=lambda *_: None)
    train(AsrTrainConfig(resume=str(tmp_path / "run"), threads=1), progress=False, log=lambda *_: None,
          given={"resume", "threads"})
    for name in ("last.safetensors", "best.safetensors"):
        ref = read_state_dict(tmp_path / "ref" / name)[0]
        resumed = read_state_dict(tmp_path / "run" / name)[0]
        assert all(torch.equal(ref[k], resumed[k]) for k in ref), name


def test_eval_streaming_transcripts_equal_offline(asr_run, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["asr", "eval", asr_run["weights"], "--data", str(asr_run["data"]), "--stream",
                 "--chunk-ms", "640", "--output", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "streaming transcripts identical to offline: 3/3" in printed
    rep = json.loads(report.read_text())
    assert rep["offline"] == rep["streaming"] and rep["chunk_ms"] == 640
    assert [t["ref"] for t in rep["transcripts"]] == [
        " ".join(json.loads(line)["text"].split()) for line in (asr_run["data"] / "test.jsonl").read_text().splitlines()]


def test_transcribe_stream_prints_the_offline_transcript(asr_run, capsys):
    audio = str(asr_run["data"] / "test" / "0001.flac")
    assert main(["asr", "transcribe", audio, "--weights", asr_run["weights"]]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed.startswith(f"{audio}: ")
    offline = printed[len(audio) + 2:]
    assert main(["asr", "transcribe", audio, "--weights", asr_run["weights"], "--stream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "streaming, 320 ms chunks" in lines[0] and "real-time factor" in lines[-1]
    assert lines[-2] == f"  final: {offline}"


@pytest.mark.parametrize("argv,says", [
    (["asr", "transcribe", "missing.wav", "--weights", "W", "--stream", "--chunk-ms", "100"], "multiple of 320 ms"),
    (["asr", "transcribe", "missing.wav", "--weights", "W"], "no such audio file"),
    (["asr", "eval", "W", "--data", "/nonexistent"], "speech data folder /nonexistent not found"),
    (["asr", "train", "--model", "convformer_nano", "--data", "bundled", "--epochs", "1"], "is not a speech model"),
])
def test_bad_input_is_one_line_exit_2(argv, says, asr_run, capsys):
    argv = [asr_run["weights"] if a == "W" else a for a in argv]
    assert main(argv) == 2
    assert says in one_line_error(capsys)


def test_weights_without_a_vocabulary_are_refused(tmp_path, capsys):
    import convformer
    path = tmp_path / "plain.safetensors"
    convformer.save_weights(convformer.create_model("conformer_ctc_xs"), path)
    assert main(["asr", "transcribe", str(BUNDLED / "test" / "0000.flac"), "--weights", str(path)]) == 2
    assert "does not record its vocabulary" in one_line_error(capsys)


@pytest.mark.parametrize("model", ["conformer_ctc_xs", pytest.param("conformer_hybrid_xs", marks=pytest.mark.slow)])
def test_torchrun_two_processes_train_and_score_the_whole_validation_set(tmp_path, model):
    import os
    import subprocess
    import sys
    data = small_corpus(tmp_path / "data", train=4, val=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = 31500 + os.getpid() % 1000 + (500 if "hybrid" in model else 0)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), "-m", "convformer", "asr", "train", "--data", str(data), "--model", model,
                          "--epochs", "1", "--batch-size", "2", "--threads", "1", "--quiet", "--output",
                          str(tmp_path), "--name", "ddp"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    row = json.loads((tmp_path / "ddp" / "metrics.json").read_text())[-1]
    # 3 validation utterances split 2 + 1 across the ranks, summed back to all 3
    assert "val_cer" in row and "3 utterances" in run.stdout
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["global_batch"] == 4


def test_sentencepiece_vocabulary_trains_and_round_trips(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from convformer.asr.task import load_asr, vocabulary_from_meta, vocabulary_meta
    texts = [json.loads(line)["text"] for line in (BUNDLED / "train.jsonl").read_text().splitlines()]
    (tmp_path / "text.txt").write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=64, model_type="unigram", minloglevel=2)
    data = small_corpus(tmp_path / "data", train=4, val=2)
    cfg = AsrTrainConfig(data=str(data), vocab=str(tmp_path / "sp.model"), epochs=1, batch_size=2, threads=1,
                         output=str(tmp_path / "runs"), name="sp")
    train(cfg, progress=False, log=lambda *_: None)
    model, vocab = load_asr(str(tmp_path / "runs" / "sp" / "best.safetensors"))
    assert len(vocab) == 64 and model.cfg.vocab_size == 64 and model.blank == 64
    assert vocab.decode(vocab.encode("seven three apple")) == "seven three apple"
    assert vocabulary_from_meta(vocabulary_meta(vocab)).encode("red car") == vocab.encode("red car")


def test_multi_latency_models_validate_every_context_and_select_on_the_mean(tmp_path):
    """conformer_ctc_xs has three contexts; each one's CER and WER are logged, and val_cer is their mean."""
    data = small_corpus(tmp_path / "data", train=3, val=2)
    train(AsrTrainConfig(data=str(data), epochs=1, batch_size=3, threads=1, output=str(tmp_path), name="ml"),
          progress=False, log=lambda *_: None)
    row = json.loads((tmp_path / "ml" / "metrics.json").read_text())[-1]
    per = [row[f"val_cer_{l}_{r}"] for l, r in ((32, 7), (32, 3), (32, 0))]
    assert row["val_cer"] == pytest.approx(sum(per) / 3, abs=1e-3)
    assert all(f"val_wer_{l}_{r}" in row for l, r in ((32, 7), (32, 3), (32, 0)))


def test_eval_names_what_it_scored_and_refuses_a_manifest_outside_the_data_folder(asr_run, tmp_path, capsys,
                                                                                  monkeypatch):
    assert main(["asr", "eval", asr_run["weights"], "--data", str(asr_run["data"])]) == 0
    assert f"scoring {asr_run['data'] / 'test.jsonl'} (3 utterances)" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text((asr_run["data"] / "test.jsonl").read_text())
    assert main(["asr", "eval", asr_run["weights"], "--manifest", "mine.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "not in the data folder" in err and "--data" in err


def test_model_kwargs_train_a_single_latency_model_that_reloads(tmp_path):
    from convformer.asr.task import load_asr
    data = small_corpus(tmp_path / "data", train=2, val=1)
    train(AsrTrainConfig(data=str(data), model_kwargs={"att_context": [[32, 7]]}, epochs=1, batch_size=2, threads=1,
                         output=str(tmp_path), name="single"), progress=False, log=lambda *_: None)
    model, _ = load_asr(str(tmp_path / "single" / "best.safetensors"))
    assert model.cfg.att_context == ((32, 7),)
    with pytest.raises(ConvformerError, match="model_kwargs may not set"):
        train(AsrTrainConfig(data=str(data), model_kwargs={"vocab_size": 5}, epochs=1, threads=1,
                             output=str(tmp_path), name="bad"), progress=False, log=lambda *_: None)


def test_causal_normalisation_is_trained_recorded_and_used(asr_run, tmp_path, capsys):
    """`--normalize fixed` trains on features normalised by the training audio's statistics, records both in
    the weight file (every run records the statistics), and `asr eval` scores with that front end."""
    from convformer.asr.data import FrontendConfig, LogMelFrontend, load_audio
    from convformer.asr.live_frontend import CausalLogMel, FeatureNorm, feature_stats, frontend_for
    from convformer.asr.task import load_asr
    _, meta = read_state_dict(asr_run["weights"])       # the plain run: per-utterance, statistics recorded
    assert meta["feature_norm"] == "utterance"
    raw = LogMelFrontend(FrontendConfig(normalize="none")).eval()
    train_audio = [e["audio_filepath"] for e in read_manifest(asr_run["data"] / "train.jsonl")]
    mean, std = feature_stats(raw(load_audio(p))[0][0] for p in train_audio)
    import numpy as np
    np.testing.assert_allclose(json.loads(meta["feature_stats"])["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(json.loads(meta["feature_stats"])["std"], std, rtol=1e-6)
    assert main(["asr", "train", "--data", str(asr_run["data"]), "--epochs", "1", "--batch-size", "3",
                 "--threads", "1", "--quiet", "--normalize", "fixed", "--output", str(tmp_path), "--name", "f"]) == 0
    weights = str(tmp_path / "f" / "best.safetensors")
    model, _ = load_asr(weights)
    assert model.feature_norm == "fixed"
    fe = frontend_for(model)
    wave = load_audio(train_audio[0])
    want = CausalLogMel(FeatureNorm("fixed", mean, std))(wave)[0]
    torch.testing.assert_close(fe(wave)[0], want)
    assert main(["asr", "train", "--data", str(asr_run["data"]), "--epochs", "1", "--normalize", "global",
                 "--output", str(tmp_path), "--name", "g"]) == 2
    assert "--normalize 'global': use one of utterance, fixed, running" in one_line_error(capsys)
