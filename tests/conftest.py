import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs one worker per core

TIMM_VARIANTS = [f"{f}_{s}" for f in ("poolformer", "poolformerv2") for s in ("s12", "s24", "s36", "m36", "m48")] + \
    [f"{f}_{s}" for f in ("convformer", "caformer") for s in ("s18", "s36", "m36", "b36")]
PAPER_ONLY_VARIANTS = [f"{f}_{s}" for f in ("identityformer", "randformer") for s in ("s12", "s24", "s36", "m36", "m48")]


def small_kwargs(name: str, size: int = 64) -> dict:
    """Extra create_model arguments for a small test input (RandFormer must know its size)."""
    return {"img_size": size} if name.startswith("randformer") else {}


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


def load_benchmark(name: str):
    """Import benchmarks/<name>.py (the benchmark scripts are not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@torch.no_grad()
def randomize_(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random weights well away from the initialisation, and non-trivial BatchNorm statistics, so parity
    tests cannot pass on zero biases or identity norms."""
    for p in model.parameters():
        p.normal_(0, std)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, std)
            m.running_var.uniform_(0.5, 1.5)
    return model


class Crash(BaseException):
    """Raised inside the training loop: nothing in the engine catches it (like Ctrl-C or a dying worker)."""


def crash_at(monkeypatch, task_cls, step: int) -> None:
    """Make ``task_cls.prepare`` raise :class:`Crash` when the loop reaches global step ``step``."""
    real = task_cls.prepare

    def prepare(self, batch, cfg, device, seed_parts):
        if seed_parts[1] == step:  # seed_parts = (seed, global_step, micro-batch, rank)
            raise Crash
        return real(self, batch, cfg, device, seed_parts)
    monkeypatch.setattr(task_cls, "prepare", prepare)


# One model per structure. Within a family the variants differ only in widths and depths (the same code
# runs), so `make test` runs each structure-level test on one variant per family and `make test-all`
# (the slow marker) on all of them. Exactness per variant (parameter and MAC counts, timm parity of the
# weights' layout) is checked for every variant in `make test` where it is cheap.
REPRESENTATIVES = {"identityformer": "identityformer_s12", "randformer": "randformer_s12",
                   "poolformer": "poolformer_s12", "poolformerv2": "poolformerv2_s12", "convformer": "convformer_s18",
                   "caformer": "caformer_s18", "cfsr": "cfsr_x4", "conformer_ctc": "conformer_ctc_xs",
                   "fastconformer_ctc": "fastconformer_ctc_s", "convformer_pose": "convformer_pose_t9",
                   "poseformer": "poseformer_t9", "lowformer:lowformer_b0": "lowformer_b0",
                   "lowformer:lowformer_e1": "lowformer_e1"}


# LowFormer's variants share their prefix but have three block structures (see tests/vision/test_models.py)
SAME_STRUCTURE = {"lowformer_b1": "lowformer_b0", "lowformer_b15": "lowformer_b0", "lowformer_b3": "lowformer_b0",
                  "lowformer_e2": "lowformer_e1"}


def family(name: str) -> str:
    if name in SAME_STRUCTURE or name in SAME_STRUCTURE.values():
        return "lowformer:" + SAME_STRUCTURE.get(name, name)
    return name.rpartition("_")[0] or name


def by_structure(names) -> list:
    """``names`` as pytest parameters: a family's representative (or, without one, every name) runs in
    `make test`; the other variants of a represented family are marked slow."""
    names = list(names)
    return [n if REPRESENTATIVES.get(family(n), n) == n or REPRESENTATIVES[family(n)] not in names
            else pytest.param(n, marks=pytest.mark.slow) for n in names]


def perturb(model, seed=0):
    """Random, non-trivial values for every tensor, including the 1.0/0.0-initialised scales and norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g)).add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    return model
