"""Reproduce the speed table of issue 3: ConvFormer-S18 and CAFormer-S18 at 224, ours beside timm
(eager, compiled, bf16 autocast) and ONNX Runtime, all in one interleaved run.

    python benchmarks/metaformer_speed.py [--models convformer_s18 caformer_s18] [--batch 32] [--repeats 5]

Prints the table and writes benchmarks/results/metaformer_speed.json and .png.
"""
import argparse
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark, write_report

VARIANTS = ["{m}", "{m}@fast", "{m}@fast-bf16", "{m}@compile", "timm:{m}", "timm:{m}@compile", "timm:{m}@bf16",
            "onnx:{m}", "onnx:timm:{m}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convformer_s18", "caformer_s18"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "metaformer_speed.json"))
    args = parser.parse_args()
    specs = [v.format(m=m) for m in args.models for v in VARIANTS]
    report = run_benchmark(specs, args.img_size, args.batch, args.repeats, 2, args.threads, not args.no_train)
    print(format_table(report))
    write_report(report, args.output, args.output[:-5] + ".png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
