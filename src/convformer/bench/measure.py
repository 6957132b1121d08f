"""Timing: throughput (batch), latency (batch 1), training-step throughput and the matmul ceiling.

Every measurement warms up, then times ``repeats`` runs and reports the median and the spread
(min..max), since single timings on a shared machine are noise. Candidates are measured in
interleaved rounds (A, B, C, A, B, C, ...) so that slow drift of the machine hits all of them alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Timing:
    seconds: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, items: int) -> dict:
        return {"median_s": self.median, "min_s": min(self.seconds), "max_s": max(self.seconds),
                "per_s": items / self.median, "runs": len(self.seconds)}


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], warmup: int = 2, repeats: int = 5,
                settle: float = 0.2) -> dict[str, Timing]:
    """Warm each callable up, then time them in round-robin order ``repeats`` times.

    Between two timed calls the process sleeps ``settle`` seconds (untimed): ONNX Runtime's worker
    threads keep spinning on the cores for a while after a run returns, and without the pause the
    candidate timed next pays for it (measured: our batch-1 latency 136 ms alone, 194 ms right after
    an ONNX Runtime run on 2 cores)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle)
            timings[name].seconds.append(time_once(fn))
    return timings


def matmul_ceiling(dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matrix product: the machine's practical compute ceiling."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = min(time_once(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def training_step(model: torch.nn.Module, batch: torch.Tensor) -> Callable[[], None]:
    """One SGD step (forward, loss, backward, update) on fixed data: cross-entropy for classifiers,
    L1 against a fixed image for super-resolution models (``scale`` attribute), MPJPE against fixed
    poses for pose lifters (``receptive_field`` attribute)."""
    scale = getattr(model, "scale", None)
    if hasattr(model, "receptive_field"):
        with torch.no_grad():
            target = torch.rand_like(model(batch))

        def loss_fn(out, target):
            return (out - target).norm(dim=-1).mean()
    elif scale:
        b, c, h, w = batch.shape
        target = torch.rand(b, c, h * scale, w * scale)
        loss_fn = torch.nn.functional.l1_loss
    else:
        target = torch.randint(0, getattr(model, "num_classes", 0) or 1000, (batch.shape[0],))
        loss_fn = torch.nn.functional.cross_entropy
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch), target)
        loss.backward()
        optimizer.step()
    return step


def machine_info() -> dict:
    """What every benchmark's numbers depend on, recorded with them: CPU model, cores, torch threads,
    library versions and the date (the one description all reports share)."""
    import datetime
    import os
    import platform
    from importlib import metadata
    from pathlib import Path
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "timm", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "platform": platform.platform(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            **versions, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
