"""Peak memory of one candidate, measured in a fresh process.

Freed memory stays cached inside a process (the C allocator keeps it), so measuring several models one
after another in the same process under-reports every model after the first. Each measurement therefore
runs ``python -m convformer.bench.memory`` in a child process: it builds the candidate, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``, Linux), runs two forward passes (or two training
steps) and reports how far the resident set rose above its level before the run. Where the reset is not
available the whole-process peak is reported instead (``exact: false`` in the result).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_in_this_process(spec: str, img_size, batch: int, train: bool, threads: int | None,
                            pretrained: bool = False) -> dict:
    import torch
    from convformer.bench.measure import training_step
    from convformer.bench.candidates import build_candidate, parse_size, sample_shape
    if threads:
        torch.set_num_threads(threads)
    hw = parse_size(img_size)
    fn, model, _ = build_candidate(spec, hw, threads, pretrained)
    x = torch.rand(batch, *sample_shape(model, hw))
    if train:
        run = training_step(model, x)
    else:
        def run():
            with torch.inference_mode():
                fn(x)
    gc.collect()
    exact = _reset_peak()
    before = _status_kb("VmRSS") if exact else 0
    for _ in range(2):
        run()
    if exact:
        peak_kb = _status_kb("VmHWM") - before
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale // 1024
    return {"peak_mb": round(peak_kb / 1024, 1), "exact": exact}


def measure_peak_memory(spec: str, img_size, batch: int, train: bool = False,
                        threads: int | None = None, timeout: float = 900, pretrained: bool = False) -> dict:
    """Peak resident memory (MB) added by running ``spec`` on (batch, 3, H, W) inputs (``img_size``: N,
    (H, W) or "HxW"); measured in a child process."""
    from convformer.bench.candidates import parse_size
    h, w = parse_size(img_size)
    cmd = [sys.executable, "-m", "convformer.bench.memory", spec, "--img-size", f"{h}x{w}",
           "--batch", str(batch)] + (["--train"] if train else []) + (["--threads", str(threads)] if threads else []) \
        + (["--pretrained"] if pretrained else [])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"peak_mb": float("nan"), "exact": False, "error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_mb": float("nan"), "exact": False, "error": err}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="Peak memory of one benchmark candidate (used by bench).")
    parser.add_argument("spec")
    parser.add_argument("--img-size", default="224", help="N or HxW")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pretrained", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure_in_this_process(args.spec, args.img_size, args.batch, args.train, args.threads,
                                             args.pretrained)))


if __name__ == "__main__":
    main()
