"""Training recipes as presets: ``convformer train --preset NAME`` (flags and config files override).

``metaformer-in1k`` is the ImageNet-1k recipe of "MetaFormer Baselines for Vision" (Yu et al., 2022)
as released in sail-sg/metaformer's training scripts: 300 epochs, global batch 4096, AdamW (LAMB for
CAFormer) with a linear-warm-up cosine schedule, weight decay 0.05, RandAugment rand-m9-mstd0.5-inc1,
Mixup 0.8 / CutMix 1.0, random erasing 0.25, label smoothing 0.1, and a per-model stochastic depth.
The learning rate is given for a global batch of 4096 and scaled linearly to the batch you run with.
"""
from __future__ import annotations

from convformer.errors import ConvformerError

_COMMON_IN1K = dict(epochs=300, weight_decay=0.05, min_lr=1e-5, label_smoothing=0.1, randaugment="rand-m9-mstd0.5-inc1",
                    mixup=0.8, cutmix=1.0, random_erasing=0.25, lr_base_batch=4096, precision="bf16")

# (optimizer, lr at batch 4096, warm-up epochs, drop path, head dropout) per model, from the paper's scripts
_METAFORMER_IN1K = {
    **{f"convformer_{s}": ("adamw", 4e-3, 20, dp, 0.0) for s, dp in
       (("s18", 0.2), ("s36", 0.3), ("m36", 0.4), ("b36", 0.6))},
    **{f"caformer_{s}": ("lamb", 8e-3, 20, dp, hd) for s, dp, hd in
       (("s18", 0.15, 0.0), ("s36", 0.3, 0.4), ("m36", 0.4, 0.4), ("b36", 0.6, 0.5))},
    **{f"identityformer_{s}": ("adamw", 4e-3, 5, dp, 0.0) for s, dp in
       (("s12", 0.1), ("s24", 0.1), ("s36", 0.2), ("m36", 0.3), ("m48", 0.4))},
    **{f"randformer_{s}": ("adamw", 4e-3, 5, dp, 0.0) for s, dp in
       (("s12", 0.1), ("s24", 0.1), ("s36", 0.2), ("m36", 0.3), ("m48", 0.3))},
    **{f"poolformerv2_{s}": ("adamw", 4e-3, 5, dp, 0.0) for s, dp in
       (("s12", 0.1), ("s24", 0.1), ("s36", 0.2), ("m36", 0.3), ("m48", 0.4))},
}

PRESETS = {
    "metaformer-in1k": "ImageNet-1k recipe of the MetaFormer baselines paper (per-model optimizer/drop path)",
    "finetune": "fine-tuning from pretrained weights: AdamW 5e-5 at batch 512, EMA, no Mixup/CutMix",
    "digits": "the embedded demo: a small ConvFormer on the bundled digits (the defaults)",
}


def preset_values(name: str, model: str | None) -> dict:
    """Option values of preset ``name`` for ``model`` (the run's model, needed for per-model values)."""
    if name not in PRESETS:
        raise ConvformerError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    if name == "digits":
        return {}
    if name == "finetune":
        return dict(optimizer="adamw", lr=5e-5, lr_base_batch=512, warmup_epochs=0.0, weight_decay=0.05,
                    ema_decay=0.9999, mixup=0.0, cutmix=0.0, label_smoothing=0.1, epochs=30)
    if model not in _METAFORMER_IN1K:
        raise ConvformerError(f"preset metaformer-in1k has no recipe for {model!r}; it covers "
                              "convformer/caformer/identityformer/randformer/poolformerv2 (pass --model)")
    opt, lr, warmup, drop_path, head_dropout = _METAFORMER_IN1K[model]
    return dict(_COMMON_IN1K, optimizer=opt, lr=lr, warmup_epochs=warmup, drop_path_rate=drop_path,
                head_dropout=head_dropout)
