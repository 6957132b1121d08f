"""`convformer bench`: our models and their peers, measured side by side in one run.

What each candidate spec builds is in ``bench/candidates.py``; this module measures them interleaved
(throughput, batch-1 latency, training step, peak memory in child processes) and reports.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from convformer.errors import ConvformerError
from convformer.registry import model_card
from convformer.bench.candidates import FILE_RUNNERS, build_candidate, default_size, parse_size, sample_shape, strip_runner
from convformer.bench.counts import count_macs, count_params
from convformer.bench.measure import interleaved, machine_info, matmul_ceiling, training_step
from convformer.bench.memory import measure_peak_memory


def run_benchmark(specs: list[str], img_size=None, batch: int = 32, repeats: int = 5, warmup: int = 2,
                  threads: int | None = None, train: bool = False, latency: bool = True, memory: bool = False,
                  progress=None, pretrained: bool = False) -> dict:
    """Measure every candidate, interleaved; ``memory`` adds peak memory measured in child processes
    (compiled candidates are skipped there: compiling again per process would take minutes).
    ``img_size``: N, (H, W) or "HxW"; None takes the first candidate's model card input size."""
    say = progress or (lambda msg: None)
    if not specs:
        raise ConvformerError("name at least one candidate to benchmark")
    hw = parse_size(img_size) or default_size(specs)
    if threads:
        torch.set_num_threads(threads)
    ceiling = matmul_ceiling()
    cands = {}
    for spec in specs:
        say(f"building {spec}")
        fn, model, name = build_candidate(spec, hw, threads, pretrained)
        shape = sample_shape(model, hw)
        macs = count_macs(model, shape)
        cands[spec] = dict(fn=fn, model=model, name=name, macs=macs, params=count_params(model), shape=shape)
    shapes = {c["shape"] for c in cands.values()}
    if len(shapes) > 1:
        raise ConvformerError(f"candidates take different inputs ({', '.join(map(str, shapes))}); benchmark "
                              "models with the same input (e.g. pose lifters of one receptive field) together")
    x = torch.rand(batch, *shapes.pop())  # [0, 1]: a valid image for the super-resolution models too
    x1 = x[:1].clone()
    latency = latency and batch > 1  # at batch 1 the throughput run is the latency
    results = {spec: {"spec": spec, "model": c["name"], "params": c["params"], "macs": c["macs"]}
               for spec, c in cands.items()}
    say(f"timing {len(cands)} candidates, {repeats} interleaved rounds")
    with torch.inference_mode():
        thr = interleaved({s: (lambda c=c: c["fn"](x)) for s, c in cands.items()}, warmup, repeats)
        # a batch-1 run is short and noisier: four times the rounds, for the same confidence in the median
        lat = interleaved({s: (lambda c=c: c["fn"](x1)) for s, c in cands.items()}, warmup, 4 * repeats) \
            if latency else {}
    # measured again after the timing: a ceiling taken while other work shared the cores reads low and
    # would inflate every "% of ceiling"; the larger of the two is the closer to the machine's
    ceiling = max(ceiling, matmul_ceiling())
    for spec, timing in thr.items():
        summ = timing.summary(batch)
        results[spec].update(throughput=summ["per_s"], throughput_spread=(batch / summ["max_s"], batch / summ["min_s"]),
                             flops_fraction=2 * cands[spec]["macs"] * summ["per_s"] / ceiling)
        if spec in lat:
            results[spec]["latency_ms"] = 1000 * lat[spec].median
        elif batch == 1:
            results[spec]["latency_ms"] = 1000 * timing.median
    if train:
        steps = {}
        for spec, c in cands.items():
            if strip_runner(spec) != spec or "@" in spec:
                continue  # training is measured on the eager models
            steps[spec] = training_step(c["model"], x)
        say(f"timing training steps of {len(steps)} candidates")
        for spec, timing in interleaved(steps, 1, max(2, repeats // 2)).items():
            results[spec]["train_throughput"] = batch / timing.median
    if memory:
        for spec in cands:
            if spec.endswith("@compile"):
                continue
            say(f"peak memory of {spec}")
            results[spec]["peak_mb"] = measure_peak_memory(spec, hw, batch, False, threads, pretrained=pretrained)["peak_mb"]
            if train and "train_throughput" in results[spec]:
                results[spec]["train_peak_mb"] = measure_peak_memory(spec, hw, batch, True, threads,
                                                                       pretrained=pretrained)["peak_mb"]
    return {"machine": machine_info(),
            "settings": {"img_size": list(hw), "batch": batch, "repeats": repeats, "warmup": warmup,
                         "pretrained": pretrained},
            "matmul_ceiling_gflops": ceiling / 1e9, "results": list(results.values())}


def format_table(report: dict) -> str:
    rows = [f"{'candidate':<32}{'params M':>9}{'GMACs':>7}{'img/s':>9}{'spread':>16}{'b1 ms':>8}"
            f"{'%peak':>7}{'MB':>7}{'train img/s':>12}{'train MB':>9}"]
    for r in report["results"]:
        lo, hi = r["throughput_spread"]
        d = 1 if r["throughput"] >= 10 else 2 if r["throughput"] >= 0.1 else 3  # slow models: more digits
        rows.append(f"{r['spec']:<32}{r['params'] / 1e6:>9.2f}{r['macs'] / 1e9:>7.2f}{r['throughput']:>9.{d}f}"
                    f"{f'{lo:.{d}f}-{hi:.{d}f}':>16}{r.get('latency_ms', float('nan')):>8.1f}"
                    f"{100 * r['flops_fraction']:>7.1f}{r.get('peak_mb', float('nan')):>7.0f}"
                    f"{r.get('train_throughput', float('nan')):>12.1f}{r.get('train_peak_mb', float('nan')):>9.0f}")
    rows.append("img/s: batch throughput (median; spread = slowest..fastest run); b1 ms: batch-1 latency; %peak: "
                "achieved FLOP/s / matmul ceiling; MB: peak memory added by the run (own process)")
    rows.append(f"matmul ceiling {report['matmul_ceiling_gflops']:.0f} GFLOP/s fp32; "
                f"{report['machine']['threads']} threads; {report['settings']}")
    return "\n".join(rows)


def write_report(report: dict, json_path: str | os.PathLike, plot_path: str | os.PathLike | None = None) -> None:
    from convformer.fileio import atomic_write
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    if plot_path:
        atomic_write(plot_path, lambda tmp: _plot(report, tmp))


def _top1(model: str):
    try:
        metrics = model_card(model).metrics
    except ConvformerError:
        return None
    value = next(iter(metrics.values()), None) if metrics else None
    return value if isinstance(value, (int, float)) else None  # classifiers' top-1; not SR's (PSNR, SSIM)


def _kind(spec: str) -> str:
    for prefix, runtime in FILE_RUNNERS.items():
        if spec.startswith(prefix):
            return runtime
    return "timm" if "timm:" in spec else "convformer"


def _plot(report: dict, path: str) -> None:
    """Left: images/s per candidate. Right: the speed/accuracy Pareto view (paper top-1 of each model,
    or GMACs when no accuracy is known), the frontier drawn through the non-dominated candidates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"convformer": "tab:blue", "timm": "tab:orange", "onnxruntime": "tab:green", "openvino": "tab:purple"}
    rows = sorted(report["results"], key=lambda r: r["throughput"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 2.5))
    ax1.barh([r["spec"] for r in rows], [r["throughput"] for r in rows], color=[colors[_kind(r["spec"])] for r in rows])
    for i, r in enumerate(rows):
        ax1.text(r["throughput"], i, f" {r['throughput']:.1f}", va="center", fontsize=7)
    h, w = report["settings"]["img_size"]
    ax1.set_xlabel(f"images / s (batch {report['settings']['batch']}, input {h}x{w})")
    ax1.tick_params(axis="y", labelsize=7)
    ax1.grid(axis="x", alpha=0.3)
    accs = {r["spec"]: _top1(r["model"]) for r in rows}
    use_acc = all(a is not None for a in accs.values())
    ys = {r["spec"]: accs[r["spec"]] if use_acc else r["macs"] / 1e9 for r in rows}
    for r in rows:
        ax2.scatter(r["throughput"], ys[r["spec"]], color=colors[_kind(r["spec"])], s=25)
    front, best_y = [], float("-inf") if use_acc else float("inf")
    for r in sorted(rows, key=lambda r: -r["throughput"]):  # fastest first: keep points that improve y
        y = ys[r["spec"]]
        if (use_acc and y > best_y) or (not use_acc and y < best_y):
            front.append(r)
            best_y = y
            ax2.annotate(r["spec"], (r["throughput"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.plot([r["throughput"] for r in front], [ys[r["spec"]] for r in front], "k--", lw=0.8, label="Pareto front")
    for kind, c in colors.items():
        ax2.scatter([], [], color=c, label=kind)
    ax2.set_xlabel("images / s (higher is better)")
    ax2.set_ylabel("ImageNet top-1 (%, model card)" if use_acc else "GMACs per image")
    ax2.set_title("speed / accuracy" if use_acc else "speed / MACs")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
