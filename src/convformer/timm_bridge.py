"""Our classification models inside timm: ``timm.create_model("cvf_convformer_s18")``.

timm keeps a registry of model entrypoints that any installed package may add to. After
``convformer.register_with_timm()`` each of our classification models is there under a prefixed name,
so the tools people already drive by timm model name (``timm.create_model``, ``timm.list_models``,
``resolve_data_config``, timm's train and validate scripts with ``--model``) build our implementation.
The prefix (``cvf_`` by default) keeps timm's own ports of the same architectures under their usual
names: registering over them would silently change what existing code builds.
"""
from __future__ import annotations

import re
import sys

import torch

from convformer.errors import ConvformerError
from convformer.registry import create_model, list_models

#: timm reads entrypoint default configurations from the entrypoint's module under this name.
default_cfgs: dict = {}


def _entrypoint(name: str, timm_name: str):
    def build(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        # timm passes its own pretrained-config plumbing; our models carry their card instead
        for key in ("device", "dtype"):
            kwargs.pop(key, None)
        return create_model(name, pretrained=pretrained, **kwargs)
    build.__name__ = build.__qualname__ = timm_name
    build.__module__ = __name__
    build.__doc__ = f"convformer's {name} (see ``convformer.model_card({name!r})``)."
    return build


def register_with_timm(prefix: str = "cvf_") -> list[str]:
    """Register every classification model with timm as ``prefix + name``; returns the timm names.

    Calling it again is harmless. An empty prefix is refused: it would replace timm's own models."""
    try:
        from timm.models import register_model
    except ImportError as err:
        raise ConvformerError("timm is not installed: pip install timm") from err
    if not re.fullmatch(r"[a-z][a-z0-9_]*_", prefix or ""):
        raise ConvformerError(f"prefix must be lower-case letters/digits ending in '_' (like 'cvf_'), got "
                              f"{prefix!r}: without one our models would replace timm's of the same name")
    from timm.models import is_model
    module = sys.modules[__name__]
    names = []
    for name in list_models(task="classification"):
        timm_name = prefix + name
        names.append(timm_name)
        if is_model(timm_name) and timm_name in default_cfgs:
            continue
        with torch.device("meta"):  # only the configuration is read: no memory, no init cost
            cfg = create_model(name).pretrained_cfg
        module.default_cfgs[timm_name] = {k: v for k, v in cfg.items() if k not in ("architecture", "tag")}
        register_model(_entrypoint(name, timm_name))
    return names
