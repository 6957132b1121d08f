"""Measurement: parameter and MAC counts (throughput/latency benchmarking arrives with the speed issue)."""
from .counts import count_macs, count_params

__all__ = ["count_macs", "count_params"]
