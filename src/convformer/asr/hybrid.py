"""The hybrid CTC/RNN-T Conformer (Noroozi et al., ICASSP 2024; NeMo's ``EncDecHybridRNNTCTCModel``): one
cache-aware encoder with two heads, the CTC head of :class:`~convformer.asr.conformer.ConformerCTC` and an
RNN-Transducer (:mod:`.transducer`), trained with ``ctc_weight * ctc + (1 - ctc_weight) * rnnt`` (NeMo's
default weight is 0.3; it is a training option, ``AsrTrainConfig.ctc_weight``). Either head decodes at
inference.

The model *is* a ``ConformerCTC`` (same encoder, same CTC head, same keys), so everything that runs a CTC
model (streaming, ONNX step export, evaluation) runs the hybrid's CTC head unchanged; ``forward`` given the
targets also returns the transducer's log-probabilities for training, and :meth:`transducer_decode`
decodes with the RNN-T head.
"""
from __future__ import annotations


import torch

from convformer.asr.conformer import ConformerConfig, ConformerCTC, conformer_config
from convformer.asr.transducer import JointNetwork, PredictionNetwork, greedy_transducer_decode


class ConformerHybrid(ConformerCTC):
    def __init__(self, cfg: ConformerConfig, pred_hidden: int = 320, joint_hidden: int = 320):
        super().__init__(cfg)
        self.prediction = PredictionNetwork(cfg.vocab_size, pred_hidden)
        self.joint = JointNetwork(cfg.d_model, pred_hidden, joint_hidden, cfg.vocab_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                targets: torch.Tensor | None = None):
        """Without targets: CTC log-probabilities and lengths, as ``ConformerCTC``. With (B, U) targets (any
        padding value): also the transducer's (B, T', U + 1, vocab_size + 1) log-probabilities."""
        x, lengths = self.encoder(features, lengths)
        ctc = torch.log_softmax(self.head(x), dim=-1)
        if targets is None:
            return ctc, lengths
        g, _ = self.prediction(targets.clamp(min=0))
        return ctc, lengths, torch.log_softmax(self.joint(x, g).float(), dim=-1)

    @torch.no_grad()
    def transducer_decode(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                          max_symbols: int = 10) -> list[list[int]]:
        """Greedy RNN-T transcripts (token ids) of a batch of features."""
        x, lengths = self.encoder(features, lengths)
        return greedy_transducer_decode(self.prediction, self.joint, x, lengths, max_symbols)


HEAD_OPTIONS = ("pred_hidden", "joint_hidden")


def build_hybrid(base: ConformerConfig, pred_hidden: int, joint_hidden: int, **kwargs) -> ConformerHybrid:
    """A hybrid Conformer from a registered configuration; keyword arguments override encoder fields and
    ``pred_hidden`` and ``joint_hidden``."""
    heads = dict(pred_hidden=pred_hidden, joint_hidden=joint_hidden)
    heads.update({k: kwargs[k] for k in HEAD_OPTIONS if k in kwargs})
    return ConformerHybrid(conformer_config(base, extra=HEAD_OPTIONS, **kwargs), **heads)


# ---- registry --------------------------------------------------------------------------------------------
from convformer.asr.conformer import _SIZES, _speech_card  # noqa: E402
from convformer.registry import register_model  # noqa: E402

_HYBRIDS = {
    # name: (encoder of, prediction/joint width, params, MACs per second of audio (encoder + CTC head))
    "conformer_hybrid_xs": ("conformer_ctc_xs", 128, 1_726_874, 49_979_040),
    "fastconformer_hybrid_s": ("fastconformer_ctc_s", 320, 13_423_578, 206_439_024),
}
for _name, (_encoder, _width, _params, _macs) in _HYBRIDS.items():
    _cfg, _, _, _note = _SIZES[_encoder]
    _card = _speech_card(_name, _cfg, _params, _macs, f"{_encoder}'s encoder and CTC head, plus an RNN-T "
                         f"prediction network (embedding + 1-layer LSTM, {_width}) and joint network ({_width}, "
                         "ReLU); trained with 0.3 CTC + 0.7 RNN-T. MACs: the encoder and CTC head (the "
                         "transducer's cost depends on the tokens decoded).")
    register_model(_card, lambda c=_cfg, w=_width, **kw: build_hybrid(c, w, w, **kw))
