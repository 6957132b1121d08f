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
import warnings
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
        with warnings.catch_warnings():
            # torch warns about pickle protocols newer than 2 before it refuses or reads them; the outcome
            # (a tensor dict, or our one-line refusal) is what the user needs to see, not that warning
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        foreign = list(dict.fromkeys(g for g in pickled_globals(path) if not g.startswith(SAFE_GLOBAL_PREFIXES)))
        if not foreign and "unsupported global" not in str(err).lower():  # a damaged pickle, not a foreign one
            raise ConvformerError(f"cannot read {path}: the file is truncated, not a weight file, or pickled in a "
                                  "way torch's safe loader does not read (re-download it, or re-save it as "
                                  "safetensors or with torch.save's default settings)") from err
        # PyTorch's own message goes on to advise an unrestricted load; we never repeat that advice.
        named = f" ({', '.join(foreign[:3])})" if foreign else ""
        raise ConvformerError(
            f"refusing {path}: it holds pickled Python objects{named} besides tensors, and loading those can run "
            "arbitrary code, so nothing in it was run; re-save the weights as safetensors where they came from "
            "(in the trusted environment that made them: safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors'))") from None
    except Exception as err:  # torch raises many types for corrupt or foreign files
        first = str(err).splitlines()[0][:160] if str(err) else ""
        raise ConvformerError(f"cannot read {path} as a PyTorch state dict ({type(err).__name__}: {first}); "
                              "the file may be truncated or not a weight file: re-download it") from err
    return unwrap_state_dict(obj, path), {}


# globals a plain state dict's pickle refers to (tensor rebuilding, storages, ordered dicts)
SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")


def pickled_globals(path: str | os.PathLike) -> list[str]:
    """``module.name`` of every global a pickle refers to (a raw pickle, the legacy torch format's pickles,
    or ``data.pkl`` inside a torch zip), read with pickletools: nothing is unpickled or run. Best effort:
    an unreadable stream gives what was found before it."""
    import io
    import pickletools
    import zipfile
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(names[0]) if names else b""
    else:
        data = Path(path).read_bytes()
    stream, found = io.BytesIO(data), []
    try:
        while stream.tell() < len(data):
            pushed, memo = [], {}  # strings pushed so far, and the memo (protocol 4+ fetches names from it)
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                    found.append(f"{pushed[-2]}.{pushed[-1]}")
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                elif isinstance(arg, str) and ("UNICODE" in op.name or op.name.endswith("STRING")):
                    pushed.append(str(arg))
                else:
                    pushed.append(None)  # something else is on top: a later STACK_GLOBAL does not take it
    except Exception:  # noqa: BLE001 - a damaged or non-pickle tail ends the scan
        pass
    return found


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
