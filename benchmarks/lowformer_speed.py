"""LowFormer: ours against timm's port, run every way a timm user would run it, in one interleaved run.

    python benchmarks/lowformer_speed.py [--models lowformer_b0 lowformer_b1] [--threads 2] [--repeats 5]

Candidates per model: ours ``@fast`` (eager) and ``@compile``, ONNX Runtime on our export, and timm's
model eager, compiled and in ONNX Runtime. Throughput at batch 32, latency at batch 1, 224 px.
The target: ours@fast faster than each timm way at both batch sizes. Prints the table and the ratios;
writes benchmarks/results/lowformer_speed.json and .png.
"""
import argparse
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark, write_report

VARIANTS = ["{m}@fast", "{m}@compile", "{m}@ort", "onnx:{m}", "timm:{m}", "timm:{m}@compile", "onnx:timm:{m}"]
PEERS = {"timm eager": "timm:{m}", "timm compiled": "timm:{m}@compile", "timm in onnxruntime": "onnx:timm:{m}"}


def ratios(report: dict) -> dict:
    """Per model and peer: ours@fast throughput / the peer's (> 1 is faster) and the peer's batch-1
    latency / ours@fast's (> 1 is faster), with ours@compile the same way."""
    by = {r["spec"]: r for r in report["results"]}
    out = {}
    for model in sorted({r["model"] for r in report["results"]}):
        for ours in (f"{model}@fast", f"{model}@compile", f"{model}@ort"):
            if ours not in by:
                continue
            for label, template in PEERS.items():
                peer = by.get(template.format(m=model))
                if peer is None:
                    continue
                out[f"{ours} vs {label}"] = {
                    "b32_speedup": by[ours]["throughput"] / peer["throughput"],
                    "b1_speedup": peer.get("latency_ms", float("nan")) / by[ours].get("latency_ms", float("nan"))}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lowformer_b0", "lowformer_b1", "lowformer_b15",
                                                        "lowformer_b3"])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, help="spec templates, {m} = model")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "lowformer_speed.json"))
    args = parser.parse_args(argv)
    specs = [v.format(m=m) for m in args.models for v in args.variants]
    report = run_benchmark(specs, args.img_size, args.batch, args.repeats, 2, args.threads, train=False,
                           memory=False, progress=lambda msg: print(f"... {msg}", flush=True))
    report["ratios"] = ratios(report)
    print(format_table(report))
    for key, r in report["ratios"].items():
        print(f"{key:<52} b{args.batch} {r['b32_speedup']:.2f}x   b1 {r['b1_speedup']:.2f}x")
    write_report(report, args.output, args.output[:-5] + ".png")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
