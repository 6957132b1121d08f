"""NVIDIA NeMo as a peer: its ``ConformerEncoder`` built from one of our models, and its cache-aware stream.

Only imported where NeMo is installed (``pip install -e '.[nemo]'``); the parity tests and
``benchmarks/asr_stream_speed.py --nemo`` use it. Also NeMo's whole model (hybrid, transducer or CTC) and
its transducer streaming, decoder included.
"""
from __future__ import annotations

import time

import torch

from convformer.asr.nemo import config_to_nemo, to_nemo


def build_nemo_encoder(model):
    """NeMo's ConformerEncoder with the configuration and weights of our ConformerCTC ``model`` (eval mode)."""
    from nemo.collections.asr.modules.conformer_encoder import ConformerEncoder
    cfg = model.cfg
    nemo = ConformerEncoder(**config_to_nemo(cfg)).eval()
    state = {k[len("encoder."):]: v for k, v in to_nemo(model.state_dict(), cfg.subsampling, with_head=False).items()
             if k.startswith("encoder.")}
    missing, unexpected = nemo.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("pos_enc.pe") for k in missing):
        raise RuntimeError(f"NeMo encoder does not take our weights: missing {missing}, unexpected {unexpected}")
    nemo.set_default_att_context_size(list(model.encoder.att_context))
    return nemo


def _chunks(nemo_encoder, feats: torch.Tensor):
    """NeMo's streaming buffer over (B, feat_in, T) features: the first chunk alone, later chunks behind the
    previous pre-encode cache frames. Yields (chunk, lengths, last, frames to drop) per step."""
    nemo_encoder.setup_streaming_params()
    sc = nemo_encoder.streaming_cfg
    total, b = feats.shape[-1], feats.shape[0]
    idx = 0
    while idx < total:
        size, shift = (sc.chunk_size[0], sc.shift_size[0]) if idx == 0 else (sc.chunk_size[1], sc.shift_size[1])
        pre = 0 if idx == 0 else sc.pre_encode_cache_size[1]
        cache = feats[:, :, max(0, idx - pre):idx]
        cache = torch.cat([feats.new_zeros(b, feats.shape[1], pre - cache.shape[-1]), cache], -1)
        chunk = torch.cat([cache, feats[:, :, idx:idx + size]], -1)
        length = torch.tensor([min(total - idx, size) + pre] * b)
        yield chunk, length, idx + shift >= total, 0 if idx == 0 else sc.drop_extra_pre_encoded
        idx += shift


@torch.no_grad()
def nemo_cache_aware_stream(nemo, feats: torch.Tensor):
    """Stream (B, feat_in, T) features through NeMo's encoder ``cache_aware_stream_step`` as its streaming
    buffer does. Returns the encoded frames (B, T', d_model) and the seconds each step took."""
    cache_ch, cache_t, cache_len = nemo.get_initial_cache_state(batch_size=feats.shape[0])
    outs, times = [], []
    for chunk, length, last, drop in _chunks(nemo, feats):
        t0 = time.perf_counter()
        enc, enc_len, cache_ch, cache_t, cache_len = nemo.cache_aware_stream_step(
            processed_signal=chunk, processed_signal_length=length, cache_last_channel=cache_ch,
            cache_last_time=cache_t, cache_last_channel_len=cache_len, keep_all_outputs=last,
            drop_extra_pre_encoded=drop)
        times.append(time.perf_counter() - t0)
        outs.append(enc[:, :, :int(enc_len[0])])
    return torch.cat(outs, -1).transpose(1, 2), times


def build_nemo_model(model, labels):
    """NeMo's whole model (``EncDecHybridRNNTCTCModel``, ``EncDecRNNTModel`` or ``EncDecCTCModel``) with the
    configuration and weights of ours, in eval mode at our inference context."""
    from omegaconf import OmegaConf
    from nemo.collections.asr import models
    from convformer.asr.nemo import nemo_config
    config = nemo_config(model, labels)
    config["preprocessor"]["dither"] = 0.0
    cls = {"EncDecHybridRNNTCTCModel": models.EncDecHybridRNNTCTCModel, "EncDecRNNTModel": models.EncDecRNNTModel,
           "EncDecCTCModel": models.EncDecCTCModel}[config["target"].rsplit(".", 1)[1]]
    nemo = cls(cfg=OmegaConf.create(config)).eval()
    missing, unexpected = nemo.load_state_dict(to_nemo(model.state_dict(), model.cfg.subsampling), strict=False)
    if unexpected or any(not k.startswith("preprocessor.") for k in missing):
        raise RuntimeError(f"NeMo model does not take our weights: missing {missing}, unexpected {unexpected}")
    nemo.encoder.set_default_att_context_size(list(model.encoder.att_context))
    return nemo


@torch.no_grad()
def nemo_transducer_stream(nemo, feats: torch.Tensor):
    """Stream one utterance's (1, feat_in, T) features through NeMo's ``conformer_stream_step`` with its RNN-T
    greedy decoding carried across steps (``previous_hypotheses``). Returns the token ids and the seconds each
    step (encoder and decoder) took."""
    cache_ch, cache_t, cache_len = nemo.encoder.get_initial_cache_state(batch_size=feats.shape[0])
    hyps, times = None, []
    for chunk, length, last, drop in _chunks(nemo.encoder, feats):
        t0 = time.perf_counter()
        _, _, cache_ch, cache_t, cache_len, hyps = nemo.conformer_stream_step(
            processed_signal=chunk, processed_signal_length=length, cache_last_channel=cache_ch,
            cache_last_time=cache_t, cache_last_channel_len=cache_len, keep_all_outputs=last,
            previous_hypotheses=hyps, drop_extra_pre_encoded=drop, return_transcription=True)
        times.append(time.perf_counter() - t0)
    return [int(t) for t in hyps[0].y_sequence], times
