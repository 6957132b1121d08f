"""The registered MetaFormer variants and their model cards.

Numbers on the cards: ``params``/``macs`` are exact counts of our implementation (parameters at 1000
classes; MACs of one 224x224 image counted with ``torch.utils.flop_counter``, FLOPs = 2 x MACs); the
tests check them against the model, against timm's parameter counts, and against the paper's rounded
figures. ``metrics`` are the papers' ImageNet-1k top-1 accuracies.
"""
from __future__ import annotations

from dataclasses import replace

from convformer.registry import IMAGENET_MEAN, IMAGENET_STD, ModelCard, WeightSource, register_model
from convformer.vision.metaformer import MetaFormerConfig, build_metaformer

PAPER_V2 = "Yu et al., MetaFormer Baselines for Vision, TPAMI 2024, arXiv:2210.13452"
PAPER_V1 = "Yu et al., MetaFormer Is Actually What You Need for Vision, CVPR 2022, arXiv:2111.11418"
CODE_V2 = ("https://github.com/sail-sg/metaformer",
           "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/metaformer.py")
CODE_V1 = ("https://github.com/sail-sg/poolformer",
           "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/metaformer.py")

SIZES_SMALL_FAMILIES = {  # IdentityFormer, RandFormer, PoolFormer(V2)
    "s12": ((2, 2, 6, 2), (64, 128, 320, 512)),
    "s24": ((4, 4, 12, 4), (64, 128, 320, 512)),
    "s36": ((6, 6, 18, 6), (64, 128, 320, 512)),
    "m36": ((6, 6, 18, 6), (96, 192, 384, 768)),
    "m48": ((8, 8, 24, 8), (96, 192, 384, 768)),
}
SIZES_CONV_FAMILIES = {  # ConvFormer, CAFormer
    "s18": ((3, 3, 9, 3), (64, 128, 320, 512)),
    "s36": ((3, 12, 18, 3), (64, 128, 320, 512)),
    "m36": ((3, 12, 18, 3), (96, 192, 384, 576)),
    "b36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}

FAMILIES = {
    "identityformer": MetaFormerConfig(mixers=("identity",) * 4, norm="spatial"),
    "randformer": MetaFormerConfig(mixers=("identity", "identity", "random", "random"), norm="spatial"),
    "poolformerv2": MetaFormerConfig(mixers=("pool",) * 4, norm="spatial"),
    # PoolFormer v1 as timm ports it: GELU MLP with bias, GroupNorm(1) with bias (eps 1e-5), layer
    # scale, no residual scale, no norm in stem/downsampling, LayerNorm + Linear head.
    "poolformer": MetaFormerConfig(mixers=("pool",) * 4, norm="spatial", norm_eps=1e-5, norm_bias=True,
                                   mlp_act="gelu", mlp_bias=True, layer_scale=1e-5,
                                   res_scale=(None,) * 4, down_norm=False),
    "convformer": MetaFormerConfig(mixers=("sepconv",) * 4, head="mlp"),
    "caformer": MetaFormerConfig(mixers=("sepconv", "sepconv", "attention", "attention"), head="mlp"),
}

# exact counts of our implementation: (trainable params, frozen params, MACs at 224)
COUNTS = {
    "caformer_b36": (98_753_614, 0, 23_160_476_160),
    "caformer_m36": (56_204_878, 0, 13_240_630_656),
    "caformer_s18": (26_341_656, 0, 4_106_941_440),
    "caformer_s36": (39_297_102, 0, 7_971_597_312),
    "convformer_b36": (99_882_616, 0, 22_629_413_376),
    "convformer_m36": (57_051_640, 0, 12_842_333_568),
    "convformer_s18": (26_774_448, 0, 3_940_984_320),
    "convformer_s36": (40_012_152, 0, 7_639_683_072),
    "identityformer_m36": (56_077_168, 0, 8_758_788_096),
    "identityformer_m48": (73_346_056, 0, 11_533_320_192),
    "identityformer_s12": (11_891_712, 0, 1_812_267_008),
    "identityformer_s24": (21_341_464, 0, 3_392_208_896),
    "identityformer_s36": (30_791_216, 0, 4_972_150_784),
    "poolformer_m36": (56_172_520, 0, 8_758_788_096),
    "poolformer_m48": (73_473_448, 0, 11_533_320_192),
    "poolformer_s12": (11_915_176, 0, 1_812_267_008),
    "poolformer_s24": (21_388_968, 0, 3_392_208_896),
    "poolformer_s36": (30_862_760, 0, 4_972_150_784),
    "poolformerv2_m36": (56_077_168, 0, 8_758_788_096),
    "poolformerv2_m48": (73_346_056, 0, 11_533_320_192),
    "poolformerv2_s12": (11_891_712, 0, 1_812_267_008),
    "poolformerv2_s24": (21_341_464, 0, 3_392_208_896),
    "poolformerv2_s36": (30_791_216, 0, 4_972_150_784),
    "randformer_m36": (56_077_168, 705_894, 9_035_383_296),
    "randformer_m48": (73_346_056, 941_192, 11_902_113_792),
    "randformer_s12": (11_891_712, 235_298, 1_888_484_352),
    "randformer_s24": (21_341_464, 470_596, 3_544_643_584),
    "randformer_s36": (30_791_216, 705_894, 5_200_802_816),
}

# paper figures: (params M, MACs G, {setting: top-1})
PAPER = {
    "identityformer": {"s12": (11.9, 1.8, 74.6), "s24": (21.3, 3.4, 78.2), "s36": (30.8, 5.0, 79.3),
                       "m36": (56.1, 8.8, 80.0), "m48": (73.3, 11.5, 80.4)},
    "randformer": {"s12": (11.9, 1.9, 76.6), "s24": (21.3, 3.5, 78.2), "s36": (30.8, 5.2, 79.5),
                   "m36": (56.1, 9.0, 81.2), "m48": (73.3, 11.9, 81.4)},
    "poolformerv2": {"s12": (11.9, 1.8, 78.0), "s24": (21.3, 3.4, 80.7), "s36": (30.8, 5.0, 81.6),
                     "m36": (56.1, 8.8, 82.2), "m48": (73.3, 11.5, 82.6)},
    "poolformer": {"s12": (12, 1.8, 77.2), "s24": (21, 3.4, 80.3), "s36": (31, 5.0, 81.4),
                   "m36": (56, 8.8, 82.1), "m48": (73, 11.6, 82.5)},
    "convformer": {"s18": (27, 3.9, (83.0, 83.7, 84.4)), "s36": (40, 7.6, (84.1, 85.4, 85.4)),
                   "m36": (57, 12.8, (84.5, 86.1, 85.6)), "b36": (100, 22.6, (84.8, 87.0, 85.7))},
    "caformer": {"s18": (26, 4.1, (83.6, 84.1, 85.0)), "s36": (39, 8.0, (84.5, 85.8, 85.7)),
                 "m36": (56, 13.2, (85.2, 86.6, 86.2)), "b36": (99, 23.2, (85.5, 87.4, 86.4))},
}

TIMM_TAGS = [("sail_in1k", 1000, 224), ("sail_in1k_384", 1000, 384),
             ("sail_in22k_ft_in1k", 1000, 224), ("sail_in22k_ft_in1k_384", 1000, 384),
             ("sail_in22k", 21841, 224)]

MLP_HEAD_NOTE = ("The MlpHead's inner LayerNorm uses eps 1e-5 as in the official code; timm uses 1e-6 "
                 "(pass head_norm_eps=1e-6 for bit-level agreement with timm).")


def _weights(family: str, size: str, top1) -> tuple:
    name = f"{family}_{size}"
    if family in ("convformer", "caformer"):
        accs = dict(zip(["sail_in1k", "sail_in22k_ft_in1k", "sail_in1k_384"], top1))
        timm = [WeightSource(tag, f"timm/{name}.{tag}", "model.safetensors", "timm", classes, px,
                             accs.get(tag)) for tag, classes, px in TIMM_TAGS]
        return tuple(timm + [WeightSource("official_in1k", "sail/dl", f"{family}/{name}.pth", "official",
                                          1000, 224, top1[0])])
    if family in ("poolformerv2", "poolformer"):
        tag = "sail_in1k"
        timm = [WeightSource(tag, f"timm/{name}.{tag}", "model.safetensors", "timm", 1000, 224, top1)]
        if family == "poolformerv2":
            timm.append(WeightSource("official_in1k", "sail/dl", f"{family}/{name}.pth", "official",
                                     1000, 224, top1))
        return tuple(timm)
    return (WeightSource("official_in1k", "sail/dl", f"{family}/{name}.pth", "official", 1000, 224, top1),)


def _card(family: str, size: str) -> ModelCard:
    name = f"{family}_{size}"
    params, frozen, macs = COUNTS.get(name, (0, 0, 0))
    p_params, p_macs, top1 = PAPER[family][size]
    if isinstance(top1, tuple):
        metrics = {"in1k_224": top1[0], "in22k_ft_in1k_224": top1[1], "in1k_384": top1[2]}
    else:
        metrics = {"in1k_224": top1}
    v1 = family == "poolformer"
    crop = (0.9 if size.startswith("s") else 0.95) if v1 else 1.0
    notes = [MLP_HEAD_NOTE] if family in ("convformer", "caformer") else []
    if family == "randformer":
        notes.append("The frozen token-mixing matrices fix the input size: 224x224 by default, "
                     "set another with img_size= at creation.")
    if v1:
        notes.append("Follows timm's port: the head normalises the pooled features with LayerNorm, "
                     "where the original PoolFormer applies GroupNorm before pooling.")
    return ModelCard(
        name=name, family=family, params=params, frozen_params=frozen, macs=macs,
        paper_params_m=p_params, paper_macs_g=p_macs, metrics=metrics,
        paper=PAPER_V1 if v1 else PAPER_V2, code=CODE_V1 if v1 else CODE_V2,
        weights=_weights(family, size, top1),
        preprocessing=dict(interpolation="bicubic", crop_pct=crop, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        notes=tuple(notes))


def _register_family(family: str, sizes: dict) -> None:
    for size, (depths, dims) in sizes.items():
        cfg = replace(FAMILIES[family], depths=depths, dims=dims)
        if family == "poolformer" and size not in ("s12", "s24"):
            cfg = replace(cfg, layer_scale=1e-6)

        def builder(_cfg=cfg, **kwargs):
            return build_metaformer(_cfg, **kwargs)
        register_model(_card(family, size), builder)


for _family in ("identityformer", "randformer", "poolformerv2", "poolformer"):
    _register_family(_family, SIZES_SMALL_FAMILIES)
for _family in ("convformer", "caformer"):
    _register_family(_family, SIZES_CONV_FAMILIES)


# Not from the paper: a small ConvFormer for the embedded digits demo (`make demo`) and quick tests.
NANO_PARAMS, NANO_MACS = 3_142_544, 10_044_160  # exact counts at 1000 classes, 32x32
NANO = replace(FAMILIES["convformer"], depths=(2, 2, 4, 2), dims=(32, 64, 128, 192), img_size=32)
register_model(ModelCard(
    name="convformer_nano", family="convformer", params=NANO_PARAMS, macs=NANO_MACS, input_size=(3, 32, 32),
    metrics={}, paper=PAPER_V2, code=CODE_V2, weights=(),
    preprocessing=dict(interpolation="bilinear", crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    notes=("Not in the paper: the ConvFormer block design at a tiny width and depth, trained from "
           "scratch by `convformer train` on the bundled digits data.", MLP_HEAD_NOTE)),
    lambda **kw: build_metaformer(NANO, **kw))


# Not a paper model: the configurable frame. Any registered mixer per stage (``mixers=``), any depths and
# widths; the default is CAFormer-S18's layout so that ``create_model("metaformer")`` is a sensible network.
FRAME = replace(FAMILIES["caformer"], depths=(3, 3, 9, 3), dims=(64, 128, 320, 512))
FRAME_PARAMS, FRAME_MACS = 26_341_656, 4_106_941_440  # exact counts of the default at 1000 classes, 224x224
register_model(ModelCard(
    name="metaformer", family="metaformer", params=FRAME_PARAMS, macs=FRAME_MACS, metrics={},
    paper=PAPER_V2, code=CODE_V2, weights=(),
    notes=("Not a paper model: the configurable MetaFormer frame. Choose one token mixer per stage from "
           "convformer.mixers.MIXERS with mixers=(...), and depths=/dims=; the default (and these counts) is "
           "CAFormer-S18's layout (sepconv, sepconv, attention, attention; MLP head), untrained.",
           MLP_HEAD_NOTE)),
    lambda **kw: build_metaformer(FRAME, **kw))
