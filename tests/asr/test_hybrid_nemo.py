"""Parity of the hybrid CTC/RNN-T and transducer Conformers with NVIDIA NeMo's own models
(``EncDecHybridRNNTCTCModel``, ``EncDecRNNTModel``) on the same random weights: encoder, CTC head, prediction
and joint networks, both losses (values and gradients) and greedy transcripts; ``.nemo`` archives both ways;
and the encoder options NeMo users set (``use_bias=False``, ``feat_out``, ``conv_norm_type``).

NeMo lives in the optional ``nemo`` extra; these run under ``make test-nemo`` and skip without it.
"""
import pytest
import torch

import convformer
from convformer.asr.nemo import (config_from_nemo, config_to_nemo, conformer_from_nemo, from_nemo, nemo_config,
                                 to_nemo, write_nemo)
from convformer.asr.task import ctc_loss
from convformer.asr.transducer import rnnt_loss
from convformer.errors import ConvformerError

from conftest import randomize_

models = pytest.importorskip("nemo.collections.asr.models",
                             reason="NeMo is not installed (pip install -e '.[nemo]' or run `make test-nemo`)")
from omegaconf import OmegaConf  # noqa: E402

LABELS = list(" abcdefghijklmnopqrstuvwxyz'")
SMALL = dict(n_layers=2, d_model=32, subsampling_channels=16, pred_hidden=24, joint_hidden=20, dropout=0.0,
             dropout_pre_encoder=0.0, dropout_att=0.0, att_context=((8, 1), (8, 0)))


def ours_and_nemo(name="conformer_hybrid_xs", seed=0, blank_shift=1.0, **extra):
    """Our model with random weights and NeMo's built from our config with the same weights; the blank's
    output bias is raised by ``blank_shift`` so that greedy decoding emits on some frames, not at all of them."""
    torch.manual_seed(seed)
    ours = randomize_(convformer.create_model(name, **{**SMALL, **extra}), std=0.3).eval()
    with torch.no_grad():
        ours.joint.net[2].bias[-1] += blank_shift
    cfg = nemo_config(ours, LABELS)
    cfg["preprocessor"]["dither"] = 0.0
    cls = models.EncDecHybridRNNTCTCModel if ours.head is not None else models.EncDecRNNTModel
    nemo = cls(cfg=OmegaConf.create(cfg)).eval()
    missing, unexpected = nemo.load_state_dict(to_nemo(ours.state_dict(), ours.cfg.subsampling), strict=False)
    assert not unexpected and all(k.startswith("preprocessor.") for k in missing)
    return ours, nemo


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 150, 80, generator=g)
    targets = torch.randint(0, len(LABELS), (2, 6), generator=g)
    return feats, torch.tensor([150, 117]), targets, torch.tensor([6, 4])


def nemo_greedy(nemo, enc, enc_len, loop_labels=True):
    """NeMo's batched greedy transcripts: label-looping (its default) or frame-looping (``loop_labels=False``,
    the algorithm ours is: they differ where max_symbols is reached at a frame)."""
    hybrid = {"decoder_type": "rnnt"} if isinstance(nemo, models.EncDecHybridRNNTCTCModel) else {}
    nemo.change_decoding_strategy(OmegaConf.create({"strategy": "greedy_batch", "greedy": {
        "max_symbols": 10, "loop_labels": loop_labels}}), verbose=False, **hybrid)
    hyps = nemo.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                         return_hypotheses=True)
    hyps = hyps[0] if isinstance(hyps, tuple) else hyps
    return [[int(t) for t in h.y_sequence] for h in hyps]


def test_hybrid_equals_nemo_encoder_heads_losses_and_greedy():
    ours, nemo = ours_and_nemo()
    feats, lengths, targets, target_lengths = batch()
    with torch.no_grad():
        enc, enc_len = nemo.encoder(audio_signal=feats.transpose(1, 2), length=lengths)
        ctc_lp, out_len, rnnt_lp = ours(feats, lengths, targets)
        assert out_len.tolist() == enc_len.tolist()
        assert torch.allclose(ours.encoder(feats, lengths)[0], enc.transpose(1, 2), atol=1e-5, rtol=0)
        want_ctc = nemo.ctc_decoder(encoder_output=enc)
        assert torch.allclose(ctc_lp, want_ctc, atol=1e-5, rtol=0)
        g, _, _ = nemo.decoder(targets=targets, target_length=target_lengths)
        want_joint = nemo.joint.joint(enc.transpose(1, 2), g.transpose(1, 2))  # log-softmaxed on CPU
        assert torch.allclose(rnnt_lp, want_joint, atol=1e-5, rtol=0)
        want = nemo.loss(log_probs=want_joint, targets=targets, input_lengths=enc_len, target_lengths=target_lengths)
        got = rnnt_loss(rnnt_lp, targets, out_len, target_lengths, reduction="mean_batch")
        assert torch.allclose(got, want, rtol=1e-5)
        want = nemo.ctc_loss(log_probs=want_ctc, targets=targets, input_lengths=enc_len, target_lengths=target_lengths)
        assert torch.allclose(ctc_loss(ctc_lp, out_len, targets, target_lengths, blank=len(LABELS)), want, rtol=1e-5)
        tokens = ours.transducer_decode(feats, lengths)
        assert 0 < sum(map(len, tokens)) < 10 * int(out_len.sum())  # some frames emit, none saturates
        assert tokens == nemo_greedy(nemo, enc, enc_len, loop_labels=False)


def test_greedy_equals_nemo_frame_looping_where_every_frame_saturates():
    """Random weights where the blank never wins: every frame emits max_symbols tokens. NeMo's label-looping
    greedy (its default) then parts from its own frame-looping one; ours is the frame-looping algorithm."""
    ours, nemo = ours_and_nemo(seed=4, blank_shift=0.0)
    feats, lengths, *_ = batch(6)
    with torch.no_grad():
        enc, enc_len = nemo.encoder(audio_signal=feats.transpose(1, 2), length=lengths)
        tokens = ours.transducer_decode(feats, lengths)
    assert [len(t) for t in tokens] == [10 * int(n) for n in enc_len]
    assert tokens == nemo_greedy(nemo, enc, enc_len, loop_labels=False)


def test_transducer_loss_gradients_equal_nemo():
    """NeMo's loss (warp-transducer in numba) and ours, differentiated through the same log-softmax."""
    _, nemo = ours_and_nemo()
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 9, 5, len(LABELS) + 1, generator=g, requires_grad=True)
    targets = torch.randint(0, len(LABELS), (2, 4), generator=g)
    frames, tokens = torch.tensor([9, 6]), torch.tensor([4, 2])
    ours_loss = rnnt_loss(torch.log_softmax(logits, -1), targets, frames, tokens, reduction="sum")
    (ours_grad,) = torch.autograd.grad(ours_loss, logits)
    nemo_loss = nemo.loss(log_probs=torch.log_softmax(logits, -1), targets=targets, input_lengths=frames,
                          target_lengths=tokens) * 2  # mean_batch over 2
    (nemo_grad,) = torch.autograd.grad(nemo_loss, logits)
    assert torch.allclose(ours_loss, nemo_loss, rtol=1e-5)
    assert torch.allclose(ours_grad, nemo_grad, atol=1e-5, rtol=1e-4)


def test_transducer_equals_nemo_rnnt_model():
    ours, nemo = ours_and_nemo("conformer_transducer_xs", seed=2)
    assert isinstance(nemo, models.EncDecRNNTModel) and not isinstance(nemo, models.EncDecHybridRNNTCTCModel)
    feats, lengths, targets, target_lengths = batch(3)
    with torch.no_grad():
        enc, enc_len = nemo.encoder(audio_signal=feats.transpose(1, 2), length=lengths)
        g, _, _ = nemo.decoder(targets=targets, target_length=target_lengths)
        assert torch.allclose(ours(feats, lengths, targets)[2], nemo.joint.joint(enc.transpose(1, 2), g.transpose(1, 2)),
                              atol=1e-5, rtol=0)
        assert ours.transducer_decode(feats, lengths) == nemo_greedy(nemo, enc, enc_len, loop_labels=False)


@pytest.mark.parametrize("name", ["conformer_hybrid_xs", "conformer_transducer_xs"])
def test_dot_nemo_archives_both_ways(tmp_path, name):
    """Ours -> .nemo -> NeMo's restore_from gives our outputs; NeMo's save_to -> ours gives NeMo's."""
    ours, _ = ours_and_nemo(name, seed=4)
    path = write_nemo(ours, LABELS, tmp_path / "ours.nemo")
    restored = models.ASRModel.restore_from(path, map_location="cpu").eval()
    feats, lengths, *_ = batch(6)
    with torch.no_grad():
        enc, enc_len = restored.encoder(audio_signal=feats.transpose(1, 2), length=lengths)
        assert torch.allclose(ours.encoder(feats, lengths)[0], enc.transpose(1, 2), atol=1e-5, rtol=0)
        assert ours.transducer_decode(feats, lengths) == nemo_greedy(restored, enc, enc_len, loop_labels=False)
    restored.save_to(str(tmp_path / "nemo.nemo"))
    back = conformer_from_nemo(tmp_path / "nemo.nemo").eval()
    assert type(back) is type(ours) and back.nemo_vocabulary == LABELS
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("options", [dict(use_bias=False), dict(feat_out=48), dict(conv_norm_type="group_norm4"),
                                     dict(conv_norm_type="instance_norm"), dict(conv_norm_type="layer_norm")])
def test_encoder_options_equal_nemo(options):
    from nemo.collections.asr.modules.conformer_encoder import ConformerEncoder
    kw = dict(feat_in=20, n_layers=2, d_model=32, n_heads=4, subsampling="dw_striding", subsampling_factor=4,
              subsampling_conv_channels=16, ff_expansion_factor=2, conv_kernel_size=5, conv_context_size="causal",
              causal_downsampling=True, att_context_size=[8, 1], att_context_style="chunked_limited", dropout=0.0,
              dropout_pre_encoder=0.0, dropout_emb=0.0, dropout_att=0.0, **options)
    torch.manual_seed(7)
    nemo = randomize_(ConformerEncoder(**kw)).eval()
    cfg = config_from_nemo(kw)
    ours = convformer.asr.conformer.ConformerCTC(cfg).eval()
    missing, unexpected = ours.load_state_dict(from_nemo(nemo.state_dict(), "dw_striding"), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    assert {k: v for k, v in config_to_nemo(cfg).items() if k in options} == options
    x, lengths = torch.randn(2, 20, 120), torch.tensor([120, 120])
    with torch.no_grad():
        want, _ = nemo(audio_signal=x, length=lengths)
        got, _ = ours.encoder(x.transpose(1, 2), lengths)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5, rtol=0)


def test_unsupported_nemo_options_are_named():
    base = dict(feat_in=20, n_layers=1, d_model=32)
    for option, value in (("reduction", "pooling"), ("self_attention_model", "abs_pos"), ("global_tokens", 2),
                          ("conv_norm_type", "fused_batch_norm"), ("conv_norm_type", "group_norm5")):
        with pytest.raises(ConvformerError, match=option if option != "conv_norm_type" else "conv_norm"):
            config_from_nemo({**base, option: value})


def test_greedy_equals_nemo_label_looping_when_frames_do_not_saturate():
    ours, nemo = ours_and_nemo(seed=0, blank_shift=1.0)
    feats, lengths, *_ = batch(6)
    with torch.no_grad():
        enc, enc_len = nemo.encoder(audio_signal=feats.transpose(1, 2), length=lengths)
        tokens = ours.transducer_decode(feats, lengths)
    assert 0 < sum(map(len, tokens)) < 5 * int(enc_len.sum())
    assert tokens == nemo_greedy(nemo, enc, enc_len)
