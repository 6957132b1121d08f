"""Reproduce the speed table of issue 3: ConvFormer-S18 and CAFormer-S18 at 224, ours beside timm
(eager, compiled, bf16 autocast) and ONNX Runtime, all in one interleaved run.

    python benchmarks/metaformer_speed.py [--models convformer_s18 caformer_s18] [--batch 32] [--repeats 5]

Prints the table and writes benchmarks/results/metaformer_speed.json and .png.
"""
import argparse
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark, write_report

VARIANTS = ["{m}", "{m}@fast", "{m}@fast-bf16", "{m}@fast-int8", "{m}@compile", "timm:{m}", "timm:{m}@compile",
            "timm:{m}@bf16", "onnx:{m}", "onnx:timm:{m}"]


def ratios(report: dict) -> str:
    """The issue's targets as ratios against the peers, per model. "Best peer" is the fastest of timm +
    torch.compile and onnxruntime on timm's export or on ours (the issue counts both exports as the
    peer a user could run instead); "ours" is the faster of @fast and @compile (fp32, PyTorch)."""
    by = {r["spec"]: r for r in report["results"]}
    nan = float("nan")
    lines = []
    for m in sorted({r["model"] for r in report["results"]}):
        def get(spec, key):
            return by.get(spec, {}).get(key, nan)

        def best(specs, key, pick):
            values = [v for v in (get(s, key) for s in specs) if v == v]
            return pick(values) if values else nan
        ours = [f"{m}@fast", f"{m}@compile"]
        peers = [f"timm:{m}@compile", f"onnx:timm:{m}", f"onnx:{m}"]
        ours_fp32, peer_fp32 = best(ours, "throughput", max), best(peers, "throughput", max)
        ours_lat, peer_lat = best(ours, "latency_ms", min), best(peers, "latency_ms", min)
        int8 = get(f"{m}@fast-int8", "throughput")
        lines += [f"{m}:",
                  f"  fp32 b{report['settings']['batch']} best ours / best peer (timm+compile, onnxruntime)  "
                  f"{ours_fp32 / peer_fp32:.2f}x (target >= 1.15)",
                  f"  b1 latency best ours / best peer                              "
                  f"{ours_lat / peer_lat:.2f}x (target <= 0.85)",
                  f"  fp32 best ours / timm eager                                   "
                  f"{ours_fp32 / get(f'timm:{m}', 'throughput'):.2f}x (earlier target >= 2.0)",
                  f"  int8 (opt-in) / best peer fp32                                {int8 / peer_fp32:.2f}x at "
                  f"b{report['settings']['batch']}, b1 {get(f'{m}@fast-int8', 'latency_ms') / peer_lat:.2f}x latency",
                  f"  bf16 ours / timm bf16 autocast                                "
                  f"{get(f'{m}@fast-bf16', 'throughput') / get(f'timm:{m}@bf16', 'throughput'):.2f}x",
                  f"  train ours / timm eager                                       "
                  f"{get(m, 'train_throughput') / get(f'timm:{m}', 'train_throughput'):.2f}x (target >= 1.4), "
                  f"peak memory {get(m, 'train_peak_mb'):.0f} vs {get(f'timm:{m}', 'train_peak_mb'):.0f} MB "
                  "(target: not higher)",
                  f"  achieved fp32 FLOP/s, best ours                               "
                  f"{100 * best(ours, 'flops_fraction', max):.0f}% of the matmul ceiling (target >= 75%)"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convformer_s18", "caformer_s18"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    parser.add_argument("--variants", nargs="+", default=VARIANTS,
                        help="spec templates, {m} = model (default: the issue's table plus @fast-int8)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "metaformer_speed.json"))
    args = parser.parse_args(argv)
    specs = [v.format(m=m) for m in args.models for v in args.variants]
    report = run_benchmark(specs, args.img_size, args.batch, args.repeats, 2, args.threads, not args.no_train,
                           memory=not args.no_memory, progress=lambda msg: print(f"... {msg}", flush=True))
    table = format_table(report)
    print(table)
    print(ratios(report))
    report["ratios"] = ratios(report)
    write_report(report, args.output, args.output[:-5] + ".png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
