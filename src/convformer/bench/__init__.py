"""Measurement: parameter and MAC counts, timing, and side-by-side benchmarks against peers."""
from convformer.bench.counts import count_macs, count_params

__all__ = ["count_macs", "count_params"]
