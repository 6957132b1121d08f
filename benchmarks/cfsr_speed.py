"""CFSR speed: our model beside the authors' own ONNX export in onnxruntime, in one interleaved run.

The standard efficiency setting of super-resolution papers: a 1280x720 output, so a 320x180 input for
x4 (640x360 for x2, 426x240 for x3), batch 1, fp32 and bf16. All candidates carry the official
weights (``--pretrained``), and the counts (params, MACs) are our network's, which computes the same
function as the ONNX file (tests/sr/test_cfsr.py).

    python benchmarks/cfsr_speed.py [--scales 4] [--repeats 5] [--no-bf16]

Prints the table and the ratios, and writes benchmarks/results/cfsr_speed.json and .png.
onnxruntime has no bfloat16 convolution kernel on the CPU (its CPU provider reports NOT_IMPLEMENTED
for Conv in bfloat16), so our bf16 row is compared with its fp32 row, the fastest it offers.
"""
import argparse
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark, write_report
from convformer.sr.cfsr import output_size_macs

VARIANTS = ["{m}", "{m}@fast", "{m}@fast-bf16", "{m}@ort", "onnx:{m}@official", "onnx:{m}"]


def ratios(report: dict) -> str:
    by = {r["spec"]: r for r in report["results"]}
    lines = []
    for m in sorted({r["model"] for r in report["results"]}):
        def get(spec, key="throughput"):
            return by.get(spec, {}).get(key, float("nan"))
        official = get(f"onnx:{m}@official")
        lines += [f"{m} ({report['settings']['img_size'][0]}x{report['settings']['img_size'][1]} input, "
                  f"batch {report['settings']['batch']}):",
                  f"  ours fp32 (@fast) / official ONNX in onnxruntime   {get(f'{m}@fast') / official:.2f}x "
                  "(target >= 1.0)",
                  f"  ours fp32 eager   / official ONNX in onnxruntime   {get(m) / official:.2f}x",
                  *([f"  ours in onnxruntime (@ort) / official ONNX in onnxruntime   "
                     f"{get(f'{m}@ort') / official:.2f}x"] if f"{m}@ort" in by else []),
                  "  best of ours ({1}) / official ONNX in onnxruntime   {0:.2f}x (issue 24 target >= 1.15)".format(
                      *max((get(s) / official, s) for s in (m, f"{m}@fast", f"{m}@ort") if s in by)),
                  *([f"  ours bf16 (@fast-bf16) / official ONNX fp32         {get(f'{m}@fast-bf16') / official:.2f}x "
                     "(onnxruntime has no CPU bf16 Conv)"] if f"{m}@fast-bf16" in by else []),
                  f"  latency: ours {get(f'{m}@fast', 'latency_ms'):.0f} ms, official ONNX "
                  f"{get(f'onnx:{m}@official', 'latency_ms'):.0f} ms per image"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", type=int, default=[4])
    parser.add_argument("--img-size", default=None, help="HxW input (default: the 1280x720-output size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 (slow without native bf16 support)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cfsr_speed.json"))
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not (args.no_bf16 and "bf16" in v)]
    reports = []
    for scale in args.scales:
        size = args.img_size or "x".join(map(str, output_size_macs(scale)[1:]))
        specs = [v.format(m=f"cfsr_x{scale}") for v in variants]
        report = run_benchmark(specs, size, args.batch, args.repeats, args.warmup, args.threads, train=False,
                               memory=not args.no_memory, pretrained=True,
                               progress=lambda msg: print(f"... {msg}", flush=True))
        print(format_table(report))
        print(ratios(report))
        report["ratios"] = ratios(report)
        reports.append(report)
    combined = dict(reports[0], results=[r for rep in reports for r in rep["results"]],
                    ratios="\n".join(rep["ratios"] for rep in reports),
                    per_scale_settings={str(s): rep["settings"] for s, rep in zip(args.scales, reports)})
    write_report(combined, args.output, args.output[:-5] + ".png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
