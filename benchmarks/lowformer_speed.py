"""LowFormer: ours against timm's port, run every way a timm user would run it, in one interleaved run.

    python benchmarks/lowformer_speed.py [--models lowformer_b0 lowformer_b1] [--threads 2] [--repeats 5]

Candidates per model: ours ``@fast`` (eager) and ``@compile``, ONNX Runtime on our export, and timm's
model eager, compiled and in ONNX Runtime. Throughput at batch 32, latency at batch 1, 224 px.
Targets: ours@fast faster than each timm way at both batch sizes (the LowFormer issue), and the best
runtime on our graph faster than timm's LowFormer in ONNX Runtime at both batch sizes (issue 24).
Prints the table and the ratios; writes benchmarks/results/lowformer_speed.json and .png.
"""
import argparse
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark, write_report

VARIANTS = ["{m}@fast", "{m}@compile", "{m}@ort", "ov:{m}@fast", "timm:{m}", "timm:{m}@compile", "onnx:timm:{m}",
            "ov:timm:{m}"]
PEERS = {"timm eager": "timm:{m}", "timm compiled": "timm:{m}@compile", "timm in onnxruntime": "onnx:timm:{m}",
         "timm in openvino": "ov:timm:{m}"}
#: ours: our network in each runtime (issue 24 takes the best of these)
OURS = ["{m}@fast", "{m}@compile", "{m}@ort", "onnx:{m}", "onnx:{m}@fast", "ov:{m}@fast"]


def runtime_target(report: dict) -> dict:
    """Per model (issue 24): the best of ours against timm's LowFormer in ONNX Runtime, as a throughput ratio
    at the run's batch (> 1 is faster) and a latency ratio at batch 1 (< 1 is faster)."""
    by = {r["spec"]: r for r in report["results"]}
    out = {}
    for model in sorted({r["model"] for r in report["results"]}):
        peer = by.get(f"onnx:timm:{model}")
        ours = [by[t.format(m=model)] for t in OURS if t.format(m=model) in by]
        if peer is None or not ours:
            continue
        fastest = max(ours, key=lambda r: r["throughput"])
        quickest = min(ours, key=lambda r: r.get("latency_ms", float("inf")))
        out[model] = {"throughput": fastest["spec"], "throughput_ratio": fastest["throughput"] / peer["throughput"],
                      "latency": quickest["spec"],
                      "latency_ratio": quickest.get("latency_ms", float("nan")) / peer.get("latency_ms", float("nan"))}
    return out


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
    report["runtime_target"] = runtime_target(report)
    print(format_table(report))
    for key, r in report["ratios"].items():
        print(f"{key:<52} b{args.batch} {r['b32_speedup']:.2f}x   b1 {r['b1_speedup']:.2f}x")
    for model, t in report["runtime_target"].items():
        print(f"{model}: best of ours / timm in onnxruntime: b{args.batch} {t['throughput_ratio']:.2f}x "
              f"({t['throughput']}, target > 1), b1 latency {t['latency_ratio']:.2f}x ({t['latency']}, target < 1)")
    write_report(report, args.output, args.output[:-5] + ".png")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
