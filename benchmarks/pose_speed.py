"""Pose lifters' speed: sequences per second at T = 27 and 243, batch 1 and 256, ConvFormer against the
same transformer with plain attention (PoseFormer) and the fully-connected baseline, eager, with
``convformer.optimize`` and in onnxruntime, interleaved in one run per input shape.

    python benchmarks/pose_speed.py [--frames 27 243] [--batches 1 256] [--repeats 5]

One "image" in the tables is one window of T frames lifted to one 3-D pose (the MLP sees one frame).
Prints the tables and writes benchmarks/results/pose_speed.json.
"""
import argparse
import json
from pathlib import Path

from convformer.bench.runner import format_table, run_benchmark

VARIANTS = ["convformer_pose_t{t}", "convformer_pose_t{t}@fast", "onnx:convformer_pose_t{t}",
            "poseformer_t{t}", "poseformer_t{t}@fast", "onnx:poseformer_t{t}"]
MLP = ["martinez_mlp", "martinez_mlp@fast", "onnx:martinez_mlp"]


def run(frames=(27, 243), batches=(1, 256), repeats: int = 5, threads=None, variants=VARIANTS, mlp=MLP,
        train: bool = False) -> list[dict]:
    reports = []
    groups = [(t, [v.format(t=t) for v in variants]) for t in frames] + ([(1, list(mlp))] if mlp else [])
    for batch in batches:
        for t, specs in groups:
            print(f"... T={t}, batch {batch}: {', '.join(specs)}", flush=True)
            report = run_benchmark(specs, None, batch, repeats, 1, threads, train=train and batch > 1,
                                   memory=False)
            report["settings"].update(frames=t)
            print(format_table(report), flush=True)
            reports.append(report)
    return reports


def summary(reports: list[dict]) -> str:
    lines = ["| T | batch | candidate | params (M) | GMACs/seq | seq/s | b1 ms |", "|---|---:|---|---:|---:|---:|---:|"]
    for rep in reports:
        for r in rep["results"]:
            lines.append(f"| {rep['settings']['frames']} | {rep['settings']['batch']} | {r['spec']} | "
                         f"{r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.3f} | {r['throughput']:.1f} | "
                         f"{r.get('latency_ms', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[27, 243])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train", action="store_true", help="also time training steps (batch > 1)")
    parser.add_argument("--no-mlp", action="store_true", help="skip the fully-connected baseline")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "pose_speed.json"))
    args = parser.parse_args(argv)
    reports = run(args.frames, args.batches, args.repeats, args.threads, mlp=[] if args.no_mlp else MLP,
                  train=args.train)
    text = summary(reports)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(reports, indent=1))
    Path(args.output).with_suffix(".md").write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
