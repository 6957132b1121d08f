"""Data order that is a pure function of (seed, epoch, step): the basis of exact resume and of
distributed runs that match single-process runs.

Each epoch is one permutation of the training set drawn from ``(seed, epoch)``. Optimizer step ``s``
takes the ``s``-th slice of ``global_batch`` indices, which is split into ``accum_steps`` micro-batches
and, within each, into one part per rank. A resumed run therefore sees exactly the samples it would
have seen, and ``world`` processes with batch ``b`` see the same global batches as one process with
batch ``world * b``.

Random augmentation is made just as reproducible: every sample is loaded under its own seed, derived
from (seed, epoch, index), so the crop or flip a sample gets does not depend on which rank or worker
loads it, or on whether the run was interrupted.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style mixing; stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@contextmanager
def seeded(seed: int):
    """Run the block with python, numpy and torch (CPU) generators seeded; restore them afterwards."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch, 0xE90C))
    return torch.randperm(n, generator=gen).tolist()


class StepBatches:
    """Per-rank micro-batches of (index, sample_seed) for the steps of one epoch, from ``start_step``."""

    def __init__(self, n: int, batch_size: int, accum_steps: int, rank: int, world: int, seed: int):
        self.n, self.b, self.accum, self.rank, self.world, self.seed = n, batch_size, accum_steps, rank, world, seed
        self.global_batch = batch_size * accum_steps * world

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def micro_batches(self, epoch: int, start_step: int = 0):
        """Yield lists of (index, seed); ``accum_steps`` consecutive lists make one optimizer step."""
        order = epoch_order(self.n, self.seed, epoch)
        for step in range(start_step, self.steps_per_epoch):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            for m in range(self.accum):
                lo = (m * self.world + self.rank) * self.b
                yield [(i, mix_seed(self.seed, epoch, i)) for i in chunk[lo:lo + self.b]]


class SeededDataset(Dataset):
    """Wraps a data set so that item ``(index, seed)`` is loaded with all generators seeded by ``seed``."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key
        with seeded(seed):
            return self.base[index]
