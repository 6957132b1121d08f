"""CPU leaderboard: which convolutional transformer is fastest on *this* CPU at the accuracy one needs.

Each entry is a benchmark candidate (see ``bench/candidates.py``) with the ImageNet-1k top-1 at 224 px
its paper reports. All entries are measured in one interleaved run by ``runner.run_benchmark``
(throughput at batch 32, latency at batch 1); accuracy is never measured here, it is the published
figure, so the leaderboard answers a speed question at a known accuracy. An entry is on the Pareto
front when no other entry is at least as fast and at least as accurate, and strictly better in one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from convformer.errors import ConvformerError
from convformer.fileio import atomic_write
from convformer.registry import list_models, model_card
from convformer.bench.candidates import strip_runner
from convformer.bench.measure import machine_info
from convformer.bench.runner import run_benchmark


@dataclass(frozen=True)
class Entry:
    spec: str            # candidate spec, e.g. "convformer_s18@fast" or "timm:resnet50"
    top1: float | None   # published ImageNet-1k top-1 (%); our model card's figure wins when it has one
    family: str          # label for the plot and table
    source: str          # where ``top1`` comes from


_CPUBONE = "CPUBone official README, ImageNet-1K table (github.com/altair199797/CPUBone)"
_TIMM_CSV = "timm results/results-imagenet.csv"

DEFAULT_ENTRIES = [
    # our models, and timm's ports of the same networks: the top-1 is our model card's (None here)
    *[Entry(f"lowformer_{v}{fast}", None, "LowFormer (ours)", "") for v in ("b0", "b1", "b15", "b3")
      for fast in ("", "@fast")],
    *[Entry(f"{name}{fast}", None, family, "")
      for name, family in (("convformer_s18", "ConvFormer (ours)"), ("caformer_s18", "CAFormer (ours)"),
                           ("poolformerv2_s12", "PoolFormerV2 (ours)")) for fast in ("", "@fast")],
    *[Entry(f"timm:lowformer_{v}", None, "LowFormer (timm)", "") for v in ("b0", "b1", "b15", "b3")],
    # timm's *_bfrobust variants have the paper's B1/B2 parameter counts (12.4M / 23.9M)
    Entry("timm:cpubone_b1_bfrobust", 78.7, "CPUBone (timm)", _CPUBONE),
    Entry("timm:cpubone_b2_bfrobust", 80.3, "CPUBone (timm)", _CPUBONE),
    # the rest: timm's evaluation of its default weights, the row for the size we run (224 px, except
    # where noted); values of the csv in huggingface/pytorch-image-models at commit aa4b5850
    Entry("timm:efficientvit_b1", 79.254, "EfficientViT (timm)", f"{_TIMM_CSV}: efficientvit_b1.r224_in1k @224"),
    Entry("timm:fastvit_sa12", 80.846, "FastViT (timm)",
          f"{_TIMM_CSV}: fastvit_sa12.apple_in1k @256 (its native size)"),
    Entry("timm:efficientformerv2_s1", 79.684, "EfficientFormerV2 (timm)",
          f"{_TIMM_CSV}: efficientformerv2_s1.snap_dist_in1k @224"),
    Entry("timm:convnext_tiny", 82.066, "ConvNeXt (timm)", f"{_TIMM_CSV}: convnext_tiny.fb_in1k @224"),
    Entry("timm:resnet50", 80.382, "ResNet (timm)", f"{_TIMM_CSV}: resnet50.a1_in1k @224"),
]


def _model_name(spec: str) -> tuple[str, bool]:
    """("resnet50", True) for "onnx:timm:resnet50@fast": the model a spec builds and whether it is timm's."""
    name = strip_runner(spec).partition("@")[0]
    return name.removeprefix("timm:"), name.startswith("timm:")


def missing_reason(spec: str) -> str | None:
    """Why the model behind ``spec`` cannot be built here (None if it can): an entry may name a model
    that another branch or a newer timm adds, and the leaderboard must still run without it."""
    name, is_timm = _model_name(spec)
    if not is_timm:
        return None if name in list_models() else f"{name} is not in convformer's registry"
    try:
        import timm
    except ImportError:
        return "timm is not installed"
    return None if timm.is_model(name) else f"timm {timm.__version__} has no model {name}"


def entry_for(spec: str) -> Entry:
    """The default entry with this spec, or a new one whose top-1 comes from our model card (if any)."""
    known = {e.spec: e for e in DEFAULT_ENTRIES}
    return known.get(spec) or Entry(spec, None, "timm" if _model_name(spec)[1] else "convformer", "")


def _top1(entry: Entry) -> tuple[float | None, str]:
    """Our model card's in1k_224 figure for our models and for timm's ports of them (one source of truth),
    else the entry's (other timm models: the published figure the entry cites)."""
    name, is_timm = _model_name(entry.spec)
    if not is_timm or entry.top1 is None:
        try:
            value = model_card(name).metrics.get("in1k_224")
        except ConvformerError:
            value = None
        if isinstance(value, (int, float)):
            return float(value), f"convformer model card {name}"
    return entry.top1, entry.source


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Keys of the non-dominated points; each point is (speed, accuracy), higher is better for both.

    A point is dominated when another is at least as good in both and strictly better in one, so
    identical points are all on the front (neither beats the other)."""
    def dominates(a, b):
        return a[0] >= b[0] and a[1] >= b[1] and a != b
    return {k for k, p in points.items() if not any(dominates(q, p) for q in points.values())}


def run_leaderboard(entries: list[Entry] | None = None, img_size=224, batch: int = 32, repeats: int = 5,
                    warmup: int = 2, threads: int | None = None, progress=None) -> dict:
    """Measure the entries that can be built (the others are skipped with their reason) and mark
    the Pareto fronts of throughput and of latency against top-1."""
    say = progress or (lambda msg: None)
    entries = list(DEFAULT_ENTRIES if entries is None else entries)
    skipped, runnable = [], []
    for entry in dict((e.spec, e) for e in entries).values():  # a spec named twice is measured once
        reason = missing_reason(entry.spec)
        if reason:
            say(f"skipping {entry.spec}: {reason}")
            skipped.append({"spec": entry.spec, "reason": reason})
        else:
            runnable.append(entry)
    if not runnable:
        raise ConvformerError("none of the leaderboard's models can be built here (see the reasons above)")
    bench = run_benchmark([e.spec for e in runnable], img_size, batch, repeats, warmup, threads,
                          latency=True, memory=False, progress=progress)
    results = {r["spec"]: r for r in bench["results"]}
    rows = []
    for entry in runnable:
        result, (top1, source) = results[entry.spec], _top1(entry)
        rows.append({"spec": entry.spec, "family": entry.family, "params": result["params"], "macs": result["macs"],
                     "top1": top1, "top1_source": source, "images_per_s": result["throughput"],
                     "latency_ms": result.get("latency_ms")})
    _mark_fronts(rows)
    return {"machine": {**machine_info(), "matmul_ceiling_gflops": bench["matmul_ceiling_gflops"]},
            "settings": {**bench["settings"], "latency_batch": 1}, "entries": rows, "skipped": skipped}


def _mark_fronts(rows: list[dict]) -> None:
    """Entries without a known top-1 take no part in either front (their flag is None)."""
    rated = [r for r in rows if r["top1"] is not None]
    by_throughput = pareto_front({r["spec"]: (r["images_per_s"], r["top1"]) for r in rated})
    by_latency = pareto_front({r["spec"]: (-r["latency_ms"], r["top1"]) for r in rated
                               if r["latency_ms"] is not None})
    for r in rows:
        rated_row = r["top1"] is not None
        r["pareto_throughput"] = r["spec"] in by_throughput if rated_row else None
        r["pareto_latency"] = r["spec"] in by_latency if rated_row and r["latency_ms"] is not None else None


def _by_speed(report: dict) -> list[dict]:
    return sorted(report["entries"], key=lambda r: -r["images_per_s"])


def _marks(r: dict) -> str:
    return " ".join(m for m, on in (("T", r["pareto_throughput"]), ("L", r["pareto_latency"])) if on)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_leaderboard(report: dict) -> str:
    """Plain-text table, fastest first; ``T``/``L``: on the throughput / latency Pareto front."""
    s = report["settings"]
    speed_header = f"img/s b{s['batch']}"
    rows = [f"{'model':<30}{'top-1':>7}{'params M':>9}{'GMACs':>7}{speed_header:>11}{'ms b1':>8}  pareto"]
    for r in _by_speed(report):
        rows.append(f"{r['spec']:<30}{_fmt(r['top1'], '.1f'):>7}{r['params'] / 1e6:>9.2f}{r['macs'] / 1e9:>7.2f}"
                    f"{r['images_per_s']:>11.1f}{_fmt(r['latency_ms'], '.1f'):>8}  {_marks(r)}")
    for skip in report["skipped"]:
        rows.append(f"skipped {skip['spec']}: {skip['reason']}")
    m = report["machine"]
    rows.append("top-1: published ImageNet-1k at 224 px; T / L: on the Pareto front of img/s / latency vs top-1")
    rows.append(f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, "
                f"input {s['img_size'][0]}x{s['img_size'][1]}, {m['date']}")
    return "\n".join(rows)


def markdown_table(report: dict) -> str:
    """The same table as Markdown, for the README and docs."""
    s, m = report["settings"], report["machine"]
    lines = [f"| model | top-1 % | params M | GMACs | img/s (batch {s['batch']}) | ms (batch 1) | Pareto |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in _by_speed(report):
        lines.append(f"| `{r['spec']}` | {_fmt(r['top1'], '.1f')} | {r['params'] / 1e6:.1f} | {r['macs'] / 1e9:.2f} "
                     f"| {r['images_per_s']:.1f} | {_fmt(r['latency_ms'], '.1f')} | {_marks(r)} |")
    lines.append("")
    lines.append(f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads; torch {m['torch']}, timm {m['timm']}, "
                 f"onnxruntime {m['onnxruntime']}; {s['img_size'][0]}x{s['img_size'][1]} input, {m['date']}. "
                 "T / L: on the Pareto front of throughput / latency against published top-1.")
    lines += [f"Skipped `{skip['spec']}`: {skip['reason']}." for skip in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_leaderboard(report: dict, json_path, png_path=None, md_path=None) -> None:
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    if png_path:
        atomic_write(png_path, lambda tmp: _plot(report, tmp))
    if md_path:
        atomic_write(md_path, lambda tmp: Path(tmp).write_text(markdown_table(report)))


def _plot(report: dict, path: str) -> None:
    """Images/s (log x) against published top-1, every point labelled; the throughput Pareto front as
    a staircase: at any speed, the best accuracy one can have at least that fast."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in report["entries"] if r["top1"] is not None]
    fig, ax = plt.subplots(figsize=(9, 6))
    for r in rows:
        ours = not _model_name(r["spec"])[1]
        ax.scatter(r["images_per_s"], r["top1"], color="tab:blue" if ours else "tab:orange", s=25, zorder=3)
        ax.annotate(r["spec"], (r["images_per_s"], r["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted((r for r in rows if r["pareto_throughput"]), key=lambda r: r["images_per_s"])
    ax.step([r["images_per_s"] for r in front], [r["top1"] for r in front], where="pre", color="k", lw=0.8,
            ls="--", label="Pareto front")
    ax.scatter([], [], color="tab:blue", label="convformer")
    ax.scatter([], [], color="tab:orange", label="peers (timm)")
    if rows:
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no entry has a published top-1", ha="center", transform=ax.transAxes)
    s, m = report["settings"], report["machine"]
    ax.set_xlabel(f"images / s, batch {s['batch']}, {s['img_size'][0]}x{s['img_size'][1]} (log scale)")
    ax.set_ylabel("ImageNet-1k top-1 % (published)")
    ax.set_title(f"{m['cpu']}, {m['threads']} threads", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
