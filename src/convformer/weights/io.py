"""Reading and writing weight files.

Our format is safetensors (no code runs on load). Other formats people have (.pth/.pt/.bin/.tar state
dicts from timm or the papers' repositories) are read with ``torch.load(weights_only=True)``, which
refuses pickled objects other than tensors and plain containers. Every write goes through
``fileio.atomic_write``, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from convformer.errors import ConvformerError
from convformer.fileio import atomic_write

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "params")


def save_state_dict(state_dict: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write tensors atomically: safetensors with metadata, or, for a path ending in .pth/.pt, a plain
    tensor dict with ``torch.save`` (no metadata) for code that reads only those; tensors alone, so
    ``torch.load(weights_only=True)`` reads it back."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if str(path).endswith((".pth", ".pt")):
        return atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a weight file into (state_dict, metadata). Safetensors metadata values stay strings."""
    path = Path(path)
    if not path.exists():
        raise ConvformerError(f"weight file not found: {path}")
    if path.is_dir():
        raise ConvformerError(f"{path} is a folder; pass the weight file itself (.safetensors or .pth)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        try:
            from safetensors import safe_open
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as err:
            raise ConvformerError(f"cannot read {path}: not a valid safetensors file (truncated or "
                                  f"corrupt: {err}); re-download or re-save it") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a foreign object: a damaged pickle
            raise ConvformerError(f"cannot read {path}: the file is truncated or not a weight file "
                                  "(re-download or re-save it)") from err
        # PyTorch's own message goes on to advise an unrestricted load; we never repeat that advice.
        raise ConvformerError(
            f"refusing {path}: it holds pickled Python objects besides tensors, and loading those can run "
            "arbitrary code; re-save the weights as safetensors where they came from (in the trusted "
            "environment that made them: safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))"
        ) from err
    except Exception as err:  # torch raises many types for corrupt or foreign files
        first = str(err).splitlines()[0][:160] if str(err) else ""
        raise ConvformerError(f"cannot read {path} as a PyTorch state dict ({type(err).__name__}: {first}); "
                              "the file may be truncated or not a weight file: re-download it") from err
    return unwrap_state_dict(obj, path), {}


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object
    return len(head) >= 9 and head[8:9] == b"{"


def unwrap_state_dict(obj, where="checkpoint") -> dict:
    """Find the tensor dict in common training-checkpoint wrappers and drop DDP's 'module.' prefix."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvformerError(f"{where} holds no state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)
