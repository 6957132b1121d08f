"""The parameter study: ConvFormer against the plain-attention network (PoseFormer's design) at matched
parameter counts, T = 27 frames, on real motion (HDM05, split by actor) and on the synthetic set.

    python benchmarks/pose_study.py --hdm05 ../shared/data/hdm05/data_3d_hdm05.npz [--jobs 2] [--keep]

Every point is one architecture (`pose train`'s architecture options on convformer_pose_t27); every point
gets the same small learning-rate sweep (seed 0 at each rate of --lrs, the rate with the lower final MPJPE
is kept) and then two more seeds at that rate, so each point is three seeds at its best rate. Training:
the one engine (AdamW, cosine, flip augmentation, MPJPE loss), identical data, windows, epochs and batch
for every model. The error is the final epoch's validation (flip TTA) on the held-out actors (HDM05: train
bd, bk, dg; test mm, tr) or subjects (synthetic: train S1 S5 S6 S7 S8; test S9 S11), all four cameras,
2 px keypoint noise. The learning rate is picked on the same held-out data, for every model alike.

Runs go to --jobs worker processes of one thread each; every finished run is appended to
results/pose_study.json at once, so an interrupted study resumes where it stopped (--keep, the default,
reuses finished runs). Prints the table, writes results/pose_study.{json,md,png}; with --per-action the
best HDM05 model's whole-sequence per-action table is added (results/pose_study_hdm05_per_action.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
T = 27
#: point -> (family, model, architecture overrides)
POINTS = {
    "conv_s": ("ConvFormer", f"convformer_pose_t{T}", {"embed_dim": 16}),
    "conv_m": ("ConvFormer", f"convformer_pose_t{T}", {}),
    "conv_l": ("ConvFormer", f"convformer_pose_t{T}", {"temporal_depth": 4}),
    "convF_s": ("ConvFormer, feature-major", f"convformer_pose_t{T}", {"embed_dim": 16, "flatten": "feature"}),
    "convF_m": ("ConvFormer, feature-major", f"convformer_pose_t{T}", {"flatten": "feature"}),
    "convF_l": ("ConvFormer, feature-major", f"convformer_pose_t{T}", {"temporal_depth": 4, "flatten": "feature"}),
    "plain_s": ("plain attention (PoseFormer)", f"convformer_pose_t{T}",
                {"attention": "linear", "embed_dim": 16, "spatial_depth": 1, "temporal_depth": 1}),
    "plain_m": ("plain attention (PoseFormer)", f"convformer_pose_t{T}", {"attention": "linear", "embed_dim": 24}),
    "plain_l": ("plain attention (PoseFormer)", f"convformer_pose_t{T}", {"attention": "linear"}),
    "single": ("ConvFormer single frame", "convformer_pose_t1", {}),
    "mlp": ("Martinez residual MLP", "martinez_mlp", {}),
}
DATASETS = {"hdm05": dict(keypoints="noise2", train_subjects="bd,bk,dg", test_subjects="mm,tr"),
            "synthetic": dict(keypoints="synth", train_subjects="S1,S5,S6,S7,S8", test_subjects="S9,S11")}


def prepare_data(folder: Path, hdm05: str, datasets) -> dict:
    """The two data folders (made once, 2 px noise): {dataset: folder}."""
    from convformer.pose.prepare import prepare_mocap, prepare_synthetic
    out = {}
    if "hdm05" in datasets:
        out["hdm05"] = folder / "hdm05"
        if not (out["hdm05"] / "data_2d_h36m_noise2.npz").exists():
            prepare_mocap(hdm05, out["hdm05"], keypoints="noise2", noise_px=2.0, overwrite=True)
    if "synthetic" in datasets:
        out["synthetic"] = folder / "synthetic"
        if not (out["synthetic"] / "data_2d_h36m_synth.npz").exists():
            prepare_synthetic(out["synthetic"], noise_px=2.0, overwrite=True)
    return out


def run_one(job: dict) -> dict:
    """One training run in this (worker) process; returns its record."""
    from convformer.bench import count_params
    from convformer.engine.train import train
    from convformer.pose.config import PoseTrainConfig
    from convformer.registry import create_model
    _, model, arch = POINTS[job["point"]]
    data = DATASETS[job["dataset"]]
    with tempfile.TemporaryDirectory(prefix="pose-study-") as runs:
        cfg = PoseTrainConfig(model=model, data=job["folder"], epochs=job["epochs"], stride=job["stride"],
                              val_stride=job["val_stride"], batch_size=job["batch"], lr=job["lr"], seed=job["seed"],
                              threads=1, output=runs, name="run", warmup_epochs=0.2, **data,
                              **{k: (",".join(map(str, v)) if k == "kernel_sizes" else v) for k, v in arch.items()})
        start = time.time()
        result = train(cfg, progress=False, log=lambda *_: None)
    kwargs = {k: v for k, v in arch.items()}
    params = count_params(create_model(model, **kwargs))
    return {**job, "params": params, "mpjpe": result["val_mpjpe"], "p_mpjpe": result["val_p_mpjpe"],
            "seconds": round(time.time() - start, 1), "val_windows": result["val_count"]}


def _key(r: dict) -> tuple:
    return (r["dataset"], r["point"], r["lr"], r["seed"])


def best_lr(done: dict, dataset: str, point: str, lrs, seed: int):
    """The rate of ``lrs`` with the lowest final MPJPE at ``seed`` (None until all of them ran); with
    ``lrs=None``, among the rates on record (what summaries use: a run with a single given rate counts)."""
    if lrs is None:
        lrs = sorted({k[2] for k in done if k[:2] == (dataset, point) and k[3] == seed})
    rows = [done.get((dataset, point, lr, seed)) for lr in lrs]
    if not rows or any(r is None for r in rows):
        return None
    finite = [r for r in rows if r["mpjpe"] is not None and math.isfinite(r["mpjpe"])]
    return min(finite, key=lambda r: r["mpjpe"])["lr"] if finite else lrs[0]


def study(args) -> dict:
    out = Path(args.output)
    report = json.loads(out.read_text()) if args.keep and out.exists() else {"runs": []}
    report["settings"] = {"receptive_field": T, "epochs": args.epochs, "stride": args.stride,
                          "val_stride": args.val_stride, "batch": args.batch, "lrs": args.lrs, "seeds": args.seeds,
                          "noise_px": 2.0, "points": {p: POINTS[p] for p in args.points}, "datasets": DATASETS,
                          "cpu": os.cpu_count(), "jobs": args.jobs}
    done = {_key(r): r for r in report["runs"]}
    folders = prepare_data(Path(args.data_dir), args.hdm05, args.datasets)
    cost = {"conv": 3, "convF": 3, "plain": 2, "single": 0.2, "mlp": 0.1}
    size = {"s": 1, "m": 2, "l": 3}

    def job(d, p, lr, seed):
        return {"dataset": d, "point": p, "lr": lr, "seed": seed, "folder": str(folders[d]), "epochs": args.epochs,
                "stride": args.stride[d], "val_stride": args.val_stride[d], "batch": args.batch}

    def weight(k):
        fam, _, sz = k[1].partition("_")
        return cost.get(fam, 1) * size.get(sz, 1)

    def save():
        report["runs"] = sorted(done.values(), key=lambda r: _key(r))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.partial")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)

    pending = sorted([k for k in ((d, p, lr, args.seeds[0]) for d in args.datasets for p in args.points
                                  for lr in args.lrs) if k not in done], key=weight, reverse=True)
    queued = set(pending)

    def followers():
        extra = []
        for d in args.datasets:
            for p in args.points:
                lr = best_lr(done, d, p, args.lrs, args.seeds[0])
                if lr is None:
                    continue
                for s in args.seeds[1:]:
                    k = (d, p, lr, s)
                    if k not in done and k not in queued:
                        extra.append(k)
                        queued.add(k)
        return sorted(extra, key=weight, reverse=True)

    pending = followers() + pending
    if args.jobs <= 1:  # in this process, one run after another
        while pending:
            k = pending.pop(0)
            done[k] = run_one(job(*k))
            save()
            pending = followers() + pending
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        running = {}
        while pending or running:
            while pending and len(running) < args.jobs:
                k = pending.pop(0)
                running[pool.submit(run_one, job(*k))] = k
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                k = running.pop(f)
                r = f.result()
                done[k] = r
                print(f"{k[0]:9s} {k[1]:8s} lr {k[2]:.0e} seed {k[3]}: MPJPE {r['mpjpe']:.1f} mm, P-MPJPE "
                      f"{r['p_mpjpe']:.1f} mm, {r['params'] / 1e6:.2f} M params, {r['seconds']:.0f} s", flush=True)
                save()
            pending = followers() + pending
    # every run on record, also those of earlier invocations with other --datasets/--points
    report["summary"] = summarise(done, [d for d in DATASETS if any(k[0] == d for k in done)],
                                  [p for p in POINTS if any(k[1] == p for k in done)], args.lrs, args.seeds)
    save()
    return report


def summarise(done: dict, datasets, points, lrs, seeds) -> list:
    rows = []
    for d in datasets:
        for p in points:
            lr = best_lr(done, d, p, None, seeds[0])
            runs = [done[(d, p, lr, s)] for s in seeds if (d, p, lr, s) in done] if lr is not None else []
            if not runs:
                continue
            m = [r["mpjpe"] for r in runs]
            pm = [r["p_mpjpe"] for r in runs]
            rows.append({"dataset": d, "point": p, "family": POINTS[p][0], "arch": POINTS[p][2], "lr": lr,
                         "params": runs[0]["params"], "seeds": len(runs),
                         "mpjpe": statistics.mean(m), "mpjpe_sd": statistics.stdev(m) if len(m) > 1 else 0.0,
                         "p_mpjpe": statistics.mean(pm), "p_mpjpe_sd": statistics.stdev(pm) if len(pm) > 1 else 0.0,
                         "mpjpe_runs": m,
                         "sweep": {f"{x:g}": done[(d, p, x, seeds[0])]["mpjpe"]
                                   for x in sorted({k[2] for k in done if k[:2] == (d, p) and k[3] == seeds[0]})},
                         "seconds": statistics.mean(r["seconds"] for r in runs)})
    return rows


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"T = {s['receptive_field']}, {s['epochs']} epochs, batch {s['batch']}, windows every "
             f"{s['stride']} frames, seeds {s['seeds']}; mean +- sd over the seeds at the rate chosen by seed 0's "
             "sweep (last column; a point with one rate there took the rate its HDM05 sweep chose).", ""]
    lines += ["| data | model | arch | params (M) | lr | MPJPE (mm) | P-MPJPE (mm) | seeds | seed-0 sweep (MPJPE) |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in report.get("summary", []):
        arch = ", ".join(f"{k}={v}" for k, v in r["arch"].items()) or "registered"
        lines.append(f"| {r['dataset']} | {r['family']} | {arch} | {r['params'] / 1e6:.3f} | {r['lr']:g} | "
                     f"{r['mpjpe']:.1f} +- {r['mpjpe_sd']:.1f} | {r['p_mpjpe']:.1f} +- {r['p_mpjpe_sd']:.1f} | "
                     f"{r['seeds']} | {', '.join(f'{k}: {v:.1f}' for k, v in r['sweep'].items())} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    rows = report.get("summary", [])
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = Figure(figsize=(5.5 * len(datasets), 8))
    styles = {"ConvFormer": ("tab:blue", "o-"), "ConvFormer, feature-major": ("tab:green", "s--"),
              "plain attention (PoseFormer)": ("tab:red", "^-"), "ConvFormer single frame": ("tab:gray", "D"),
              "Martinez residual MLP": ("black", "x")}
    for i, d in enumerate(datasets):
        for j, (key, label) in enumerate((("mpjpe", "MPJPE (mm)"), ("p_mpjpe", "P-MPJPE (mm)"))):
            ax = fig.add_subplot(2, len(datasets), j * len(datasets) + i + 1)
            for fam, (colour, style) in styles.items():
                pts = sorted((r for r in rows if r["dataset"] == d and r["family"] == fam), key=lambda r: r["params"])
                if pts:
                    ax.errorbar([r["params"] / 1e6 for r in pts], [r[key] for r in pts],
                                yerr=[r[f"{key}_sd"] for r in pts], fmt=style, color=colour, capsize=3, label=fam)
            ax.set_xscale("log")
            ax.set_xlabel("parameters (M)")
            ax.set_ylabel(label)
            ax.set_title(f"{d}: {label.split(' ')[0]} vs parameters (T={T})")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def per_action(report: dict, folder: Path, args) -> str:
    """Whole-sequence per-action table of the best HDM05 model (seed 0 retrained with --keep-weights)."""
    import torch
    from convformer.engine.train import train
    from convformer.pose.config import PoseTrainConfig
    from convformer.pose.task import evaluate_sequences, load_lifter, load_split
    torch.set_num_threads(args.jobs)
    best = min((r for r in report["summary"] if r["dataset"] == "hdm05"), key=lambda r: r["mpjpe"])
    _, model, arch = POINTS[best["point"]]
    with tempfile.TemporaryDirectory(prefix="pose-study-best-") as runs:
        cfg = PoseTrainConfig(model=model, data=str(folder), epochs=args.epochs, stride=args.stride["hdm05"],
                              val_stride=args.val_stride["hdm05"], batch_size=args.batch, lr=best["lr"], seed=0,
                              threads=args.jobs, output=runs, name="best", warmup_epochs=0.2, **DATASETS["hdm05"],
                              **arch)
        result = train(cfg, progress=False, log=lambda *_: None)
        net, _ = load_lifter(str(Path(result["folder"]) / "last.safetensors"))
        test = load_split(cfg, cfg.test_subjects, None)
        table, velocity = evaluate_sequences(net, test.sequences, flip_tta=True, progress=True, left=test.left,
                                             right=test.right)
    text = (f"Best HDM05 point: {best['family']} {best['arch']} ({best['params'] / 1e6:.2f} M), lr {best['lr']:g}, "
            f"seed 0; every frame of mm and tr, 4 cameras, flip TTA.\n\n" + table.to_markdown(("mpjpe", "p_mpjpe")))
    report["hdm05_per_action"] = {"point": best["point"], "table": table.table(), "mpjve": velocity}
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hdm05", default=str(Path(__file__).parents[1] / ".." / "shared" / "data" / "hdm05" /
                                               "data_3d_hdm05.npz"), help="HDM05 3-D file (VideoPose3D layout)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3],
                        help="the sweep (seed 0 at each); one rate skips the sweep")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stride", type=int, default=16, help="training windows every N frames (HDM05; the "
                                                               "synthetic set's stride gives the same window count)")
    parser.add_argument("--val-stride", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs (one thread each)")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "convformer-pose-study"))
    parser.add_argument("--no-keep", dest="keep", action="store_false", help="start afresh (default: reuse runs)")
    parser.add_argument("--per-action", action="store_true", help="also retrain the best HDM05 model and "
                                                                  "print its per-action table")
    parser.add_argument("--output", default=str(RESULTS / "pose_study.json"))
    args = parser.parse_args(argv)
    # HDM05 trains on 22,425 frames x 4 views, the synthetic set on about 15,000 x 4: strides with equal counts
    args.stride = {"hdm05": args.stride, "synthetic": max(1, round(args.stride * 15000 / 22425))}
    args.val_stride = {"hdm05": args.val_stride, "synthetic": max(1, round(args.val_stride * 6000 / 13155))}
    report = study(args)
    out = Path(args.output)
    text = markdown(report)
    if args.per_action and "hdm05" in args.datasets:
        text += "\n" + per_action(report, Path(args.data_dir) / "hdm05", args)
        out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(text)
    plot(report, out.with_suffix(".png"))
    print(text)
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
