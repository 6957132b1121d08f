"""Image classification: MetaFormer (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer) and
LowFormer, the timm-style backbone API, their inference fast paths, detection backbones, image data and
the classification task of the training engine.

Importing this package registers the models (``metaformer_zoo``, ``lowformer``) and their fast paths with
the core; the core's registry imports it by name on first use.
"""
from __future__ import annotations

import copy

import torch

from convformer.optimize import FastPath, register_fast_path
from convformer.vision import lowformer, metaformer_zoo  # noqa: F401  (register the models)
from convformer.vision.fold import fold_metaformer
from convformer.vision.lowformer import LowFormer
from convformer.vision.lowformer_fast import FastLowFormer, fold_lowformer
from convformer.vision.metaformer import MetaFormer


def _fast_metaformer(model, fold: bool, compile: bool, int8: bool):
    return fold_metaformer(model) if fold else model


def _fast_lowformer(model, fold: bool, compile: bool, int8: bool):
    # eager: a channels-last copy for batches, NCHW for single images; compiled: one folded channels-last
    # graph whose weights inductor may treat as constants ("freezing"), which lets it prepack them and
    # fuse each conv with its activation and residual add
    if not fold:
        return model
    return fold_lowformer(model).to(memory_format=torch.channels_last) if compile else FastLowFormer(model)


def _ort_metaformer(model):
    from convformer.vision.metaformer_ort import OrtMetaFormer
    return OrtMetaFormer(model) if OrtMetaFormer.supports(model) else fold_metaformer(copy.deepcopy(model).eval())


register_fast_path(MetaFormer, FastPath(prepare=_fast_metaformer, int8=lambda m: m.stages, onnxruntime=_ort_metaformer))
# the export form is the folded network alone: the batch-size switch of FastLowFormer is eager Python
register_fast_path(LowFormer, FastPath(prepare=_fast_lowformer, export=lambda m: fold_lowformer(copy.deepcopy(m)),
                                       compile_options={"freezing": True}))
