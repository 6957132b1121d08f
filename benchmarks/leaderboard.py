"""The CPU leaderboard: every default entry (ours, plain and @fast, and the timm peers) measured in one
interleaved run at batch 32 (images/s) and batch 1 (ms), ranked against each paper's ImageNet top-1.

    python benchmarks/leaderboard.py [--threads 2] [--repeats 5] [--models SPEC ...]

Prints the table and writes benchmarks/results/leaderboard.json, .png and .md (the table the README
includes). Entries whose model is missing here (e.g. a newer timm's) are skipped and listed.
"""
import argparse
from pathlib import Path

from convformer.bench.leaderboard import entry_for, format_leaderboard, run_leaderboard, write_leaderboard


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="entries instead of the default list")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "leaderboard.json"))
    args = parser.parse_args(argv)
    entries = [entry_for(spec) for spec in args.models] if args.models else None
    report = run_leaderboard(entries, args.img_size, args.batch, args.repeats, 2, args.threads,
                             progress=lambda msg: print(f"... {msg}", flush=True))
    print(format_leaderboard(report))
    stem = args.output[:-5] if args.output.endswith(".json") else args.output
    write_leaderboard(report, args.output, stem + ".png", stem + ".md")
    print(f"wrote {args.output}, {stem}.png and {stem}.md")


if __name__ == "__main__":
    main()
