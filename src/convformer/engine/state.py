"""The training checkpoint: everything needed to continue a run exactly, in one safetensors file.

Tensors: ``model.*``, ``ema.*``, ``optim.<param index>.<name>`` (optimizer state) and ``rng.torch``.
Everything else (step, epoch, position in the epoch, running sums, optimizer hyper-parameters, scaler
state, python/numpy generator states, best accuracy) is JSON in the file's metadata. No pickle: a
checkpoint from a stranger cannot run code. Written to a temporary file and renamed, so a kill or a
full disk during the write leaves the previous checkpoint in place.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from convformer.errors import ConvformerError
from convformer.weights.io import read_state_dict, save_state_dict

KIND = "convformer-train-state-v1"


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def save_train_state(path: Path, model, optimizer, ema, scaler, info: dict) -> None:
    tensors = {f"model.{k}": v for k, v in _unwrap(model).state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    opt = optimizer.state_dict()
    scalars = {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.reshape(1) if value.ndim == 0 else value
                scalars.setdefault(str(idx), {})[f"{name}:ndim"] = value.ndim
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = []
    for g, group in enumerate(opt["param_groups"]):
        plain = {}
        for name, value in group.items():
            if torch.is_tensor(value):  # e.g. LAMB keeps its step count in the group
                tensors[f"optim_group.{g}.{name}"] = value.reshape(1) if value.ndim == 0 else value
                plain[f"{name}:tensor_ndim"] = value.ndim
            else:
                plain[name] = value
        groups.append(plain)
    tensors["rng.torch"] = torch.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {"kind": KIND, "architecture": info.get("model", ""), "info": json.dumps(info), "param_groups": json.dumps(groups),
            "optim_scalars": json.dumps(scalars),
            "scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}),
            "rng_python": json.dumps([py_state[0], list(py_state[1]), py_state[2]]),
            "rng_numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]])}
    save_state_dict(tensors, path, metadata=meta)


def read_train_state(path: str | Path) -> tuple[dict, dict]:
    """Return (tensors, metadata) of a training checkpoint, or raise a clear error."""
    path = Path(path)
    if not path.exists():
        raise ConvformerError(f"nothing to resume at {path}: pass a run folder of `convformer train` (or its "
                              "checkpoint.safetensors)")
    if path.is_dir():
        path = path / "checkpoint.safetensors"
        if not path.exists():
            raise ConvformerError(f"no checkpoint.safetensors in {path.parent}; nothing to resume (the run "
                                  "was stopped before its first checkpoint: start it again)")
    tensors, meta = read_state_dict(path)
    if meta.get("kind") != KIND:
        raise ConvformerError(f"{path} is not a training checkpoint (it holds weights only); resume from "
                              "the run folder or its checkpoint.safetensors")
    return tensors, meta


def load_train_state(tensors: dict, meta: dict, model, optimizer, ema, scaler) -> dict:
    """Restore model, optimizer, EMA, scaler and generator states; return the saved ``info``."""
    _unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        ema.module.load_state_dict(ema_state if ema_state else _unwrap(model).state_dict())
    scalars = json.loads(meta["optim_scalars"])
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            ndim = scalars.get(idx, {}).get(f"{name}:ndim", value.ndim)
            state.setdefault(int(idx), {})[name] = value.reshape(()) if ndim == 0 else value
    for idx, items in scalars.items():
        for name, value in items.items():
            if not name.endswith(":ndim"):
                state.setdefault(int(idx), {})[name] = value
    groups = json.loads(meta["param_groups"])
    for g, group in enumerate(groups):
        for key in [k for k in group if k.endswith(":tensor_ndim")]:
            name, ndim = key[:-len(":tensor_ndim")], group.pop(key)
            value = tensors[f"optim_group.{g}.{name}"]
            group[name] = value.reshape(()) if ndim == 0 else value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scaler_state = json.loads(meta.get("scaler", "{}"))
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng.torch"])
    v, st, g = json.loads(meta["rng_python"])
    random.setstate((v, tuple(st), g))
    np_state = json.loads(meta["rng_numpy"])
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    return json.loads(meta["info"])
