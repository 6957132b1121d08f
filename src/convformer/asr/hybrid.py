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
    def __init__(self, cfg: ConformerConfig, pred_hidden: int = 320, joint_hidden: int = 320, pred_layers: int = 1,
                 joint_activation: str = "relu"):
        super().__init__(cfg)
        self.prediction = PredictionNetwork(cfg.vocab_size, pred_hidden, pred_layers)
        self.joint = JointNetwork(cfg.out_dim, pred_hidden, joint_hidden, cfg.vocab_size, joint_activation)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                targets: torch.Tensor | None = None):
        """Without targets: CTC log-probabilities and lengths, as ``ConformerCTC``. With (B, U) targets (any
        padding value): also the transducer's (B, T', U + 1, vocab_size + 1) log-probabilities."""
        x, lengths = self.encoder(features, lengths)
        ctc = torch.log_softmax(self.head(x), dim=-1) if self.head is not None else None
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


class ConformerTransducer(ConformerHybrid):
    """The encoder and the RNN-T head alone (NeMo's ``EncDecRNNTModel``): a hybrid without the CTC head, so
    it decodes only with the transducer and trains only on its loss (``head`` is None)."""

    def __init__(self, cfg: ConformerConfig, **heads):
        super().__init__(cfg, **heads)
        self.head = None


HEAD_OPTIONS = ("pred_hidden", "joint_hidden", "pred_layers", "joint_activation")


def build_hybrid(base: ConformerConfig, width: int, ctc_head: bool = True, **kwargs) -> ConformerHybrid:
    """A hybrid Conformer from a registered configuration (without ``ctc_head``: a transducer) whose prediction
    and joint networks are ``width`` wide; keyword arguments override encoder fields and ``HEAD_OPTIONS``."""
    heads = dict(pred_hidden=width, joint_hidden=width)
    heads.update({k: kwargs[k] for k in HEAD_OPTIONS if k in kwargs})
    cfg = conformer_config(base, extra=HEAD_OPTIONS, **kwargs)
    return ConformerHybrid(cfg, **heads) if ctc_head else ConformerTransducer(cfg, **heads)


# ---- registry --------------------------------------------------------------------------------------------
from convformer.asr.conformer import _SIZES, _speech_card  # noqa: E402
from dataclasses import replace  # noqa: E402

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
    if _name == "conformer_hybrid_xs":
        _card = replace(_card, notes=_card.notes + ("Shipped weights (asr/pretrained/conformer_hybrid_xs_espeak.safetensors, trained "
                                     "on the bundled synthetic voices; its card is the JSON beside it): "
                                     "`convformer asr transcribe FILE` uses them without --weights.",))
    register_model(_card, lambda c=_cfg, w=_width, **kw: build_hybrid(c, w, **kw))

# the transducer alone: the hybrid's encoder and RNN-T head without the CTC head
_cfg, _, _, _ = _SIZES["conformer_ctc_xs"]
register_model(_speech_card("conformer_transducer_xs", _cfg, 1_724_061, 49_909_440,
                            "conformer_ctc_xs's encoder with only the RNN-T head of conformer_hybrid_xs (prediction "
                            "network: embedding + 1-layer LSTM, 128; joint network: 128, ReLU); NeMo's "
                            "EncDecRNNTModel. MACs: the encoder (the transducer's cost depends on the tokens "
                            "decoded)."),
               lambda c=_cfg, **kw: build_hybrid(c, 128, ctc_head=False, **kw))
