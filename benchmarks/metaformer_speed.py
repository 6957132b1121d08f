"""The deployment table of issue 24: ConvFormer-S18 and CAFormer-S18 at 224, our graph in each runtime
(PyTorch eager and compiled, ONNX Runtime, OpenVINO) beside timm's model in each, all in one interleaved run.

    python benchmarks/metaformer_speed.py [--models convformer_s18 caformer_s18] [--batch 32] [--repeats 5]

Prints the table and writes benchmarks/results/metaformer_speed.json and .png.
"""
import argparse
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark, write_report

VARIANTS = ["{m}@fast", "{m}@fast-int8", "{m}@ort-int8", "{m}@compile", "{m}@ort", "ov:{m}@ort", "ov:{m}@fast",
            "timm:{m}", "timm:{m}@compile", "onnx:timm:{m}", "ov:timm:{m}"]

#: the best user path (issue 24): what a user could run without us, timm's model in each runtime
PEERS = ["timm:{m}", "timm:{m}@compile", "onnx:timm:{m}", "ov:timm:{m}"]
#: ours: our graph in each runtime (fp32)
OURS = ["{m}@fast", "{m}@compile", "{m}@ort", "onnx:{m}@ort", "ov:{m}@ort", "ov:{m}@fast"]


def ratios(report: dict) -> str:
    """Issue 24's targets as ratios, per model: ours = the best runtime on our graph, the best user path =
    the best of timm eager, timm + torch.compile, ONNX Runtime and OpenVINO on timm's export (fp32)."""
    by = {r["spec"]: r for r in report["results"]}
    nan = float("nan")
    batch = report["settings"]["batch"]
    lines = []
    for m in sorted({r["model"] for r in report["results"]}):
        def get(spec, key):
            return by.get(spec, {}).get(key, nan)

        def best(templates, key, pick):
            found = [(get(t.format(m=m), key), t.format(m=m)) for t in templates]
            found = [(v, s) for v, s in found if v == v]
            return pick(found) if found else (nan, "-")
        ours_thr, peer_thr = best(OURS, "throughput", max), best(PEERS, "throughput", max)
        ours_lat, peer_lat = best(OURS, "latency_ms", min), best(PEERS, "latency_ms", min)
        int8 = best(["{m}@fast-int8", "{m}@ort-int8"], "throughput", max)
        lines += [f"{m}:",
                  f"  fp32 b{batch}: ours {ours_thr[0]:.2f} img/s ({ours_thr[1]}) / best user path {peer_thr[0]:.2f} "
                  f"({peer_thr[1]}) = {ours_thr[0] / peer_thr[0]:.2f}x (target >= 1.15)",
                  f"  b1 latency: ours {ours_lat[0]:.1f} ms ({ours_lat[1]}) / best user path {peer_lat[0]:.1f} ms "
                  f"({peer_lat[1]}) = {ours_lat[0] / peer_lat[0]:.2f}x (target <= 0.85)",
                  f"  int8 (opt-in) b{batch}: {int8[0]:.2f} img/s ({int8[1]}) / best user path fp32: "
                  f"{int8[0] / peer_thr[0]:.2f}x (target >= 1.5)",
                  f"  achieved fp32 FLOP/s of {ours_thr[1]}: {100 * get(ours_thr[1], 'flops_fraction'):.0f}% of the "
                  "matmul ceiling (target >= 80%)"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convformer_s18", "caformer_s18"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train", action="store_true", help="also time training steps (eager candidates)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS,
                        help="spec templates, {m} = model (default: every runtime on our graph and on timm's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "metaformer_speed.json"))
    args = parser.parse_args(argv)
    specs = [v.format(m=m) for m in args.models for v in args.variants]
    report = run_benchmark(specs, args.img_size, args.batch, args.repeats, 2, args.threads, args.train,
                           memory=not args.no_memory, progress=lambda msg: print(f"... {msg}", flush=True))
    table = format_table(report)
    print(table)
    print(ratios(report))
    report["ratios"] = ratios(report)
    write_report(report, args.output, args.output[:-5] + ".png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
