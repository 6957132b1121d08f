"""ConvFormer against the lifters it is compared with, trained on the same synthetic Human3.6M-like data
with the same budget, evaluated on held-out subjects (S9, S11) seen from a held-out camera.

    python benchmarks/pose_synthetic.py [--receptive-field 9] [--epochs 12] [--frames 600] [--noise 2] [--stride 8]

Every model goes through `convformer pose train` (the one training engine: AdamW, cosine schedule, flip
augmentation, MPJPE loss) with identical data, epochs, batch and learning rate, then `pose eval`'s
whole-sequence evaluation (flip test-time augmentation) gives the per-action protocol 1/2 tables.
Prints the tables and writes benchmarks/results/pose_synthetic.json (+ .md).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import convformer
from convformer.bench import count_params
from convformer.pose.config import PoseTrainConfig
from convformer.pose.task import evaluate_sequences, load_split
from convformer.engine.train import train
from convformer.weights import load_weights



KEYS = ("convformer", "plain", "poseformer", "single", "mlp")


def contenders(t: int, keys=KEYS) -> tuple:
    """(label, model, extra config) of the models compared at receptive field ``t`` (``keys`` picks some)."""
    every = {"convformer": (f"ConvFormer T={t}", f"convformer_pose_t{t}", {}),
             "plain": (f"same network, plain attention T={t}", f"convformer_pose_t{t}", {"attention": "linear"}),
             "poseformer": (f"PoseFormer T={t} (4+4 blocks)", f"poseformer_t{t}", {}),
             "single": ("ConvFormer single frame (T=1)", "convformer_pose_t1", {}),
             "mlp": ("Martinez residual MLP (T=1)", "martinez_mlp", {})}
    return tuple(every[k] for k in keys)


def run(epochs: int, frames: int, noise: float, stride: int, batch: int, lr: float, output: Path, models=None,
        threads: int | None = None, progress: bool = True, receptive_field: int = 9, lr_schedule: str = "cosine",
        lr_decay: float = 0.95) -> dict:
    models = models or contenders(receptive_field)
    results = []
    with tempfile.TemporaryDirectory(prefix="pose-bench-") as runs:
        for label, name, extra in models:
            cfg = PoseTrainConfig(model=name, epochs=epochs, synthetic_frames=frames, synthetic_noise=noise,
                                  stride=stride, val_stride=stride * 4, batch_size=batch, lr=lr, train_cameras="0,1,2",
                                  test_cameras="3", threads=threads, output=runs, name=f"{name}-{len(results)}",
                                  lr_schedule=lr_schedule, lr_decay=lr_decay, **extra)
            start = time.time()
            result = train(cfg, progress=progress, log=print if progress else (lambda *_: None))
            seconds = time.time() - start
            net = convformer.create_model(name, **({"attention": extra["attention"]} if "attention" in extra else {}))
            load_weights(net, Path(result["folder"]) / "last.safetensors")
            test = load_split(cfg, cfg.test_subjects, cfg.test_cameras)
            table, velocity = evaluate_sequences(net.eval(), test.sequences, flip_tta=True, progress=False,
                                                 left=test.left, right=test.right)
            rows = table.table()
            results.append({"label": label, "model": name, **extra, "params": count_params(net),
                            "train_seconds": round(seconds, 1), "per_action": rows, "mpjve": velocity,
                            "mpjpe": rows["Average"]["mpjpe"], "p_mpjpe": rows["Average"]["p_mpjpe"],
                            "markdown": table.to_markdown(("mpjpe", "p_mpjpe"))})
            print(f"{label}: MPJPE {results[-1]['mpjpe']:.1f} mm, P-MPJPE {results[-1]['p_mpjpe']:.1f} mm "
                  f"({seconds:.0f}s)")
    report = {"settings": {"receptive_field": receptive_field, "epochs": epochs, "frames": frames, "noise_px": noise,
                           "stride": stride, "batch": batch, "lr": lr, "lr_schedule": lr_schedule, "lr_decay": lr_decay,
                           "train": "S1,S5,S6,S7,S8 cameras 0,1,2", "test": "S9,S11 camera 3",
                           "threads": torch.get_num_threads(), "torch": torch.__version__},
              "results": results}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    output.with_suffix(".md").write_text(summary(report))
    return report


def summary(report: dict) -> str:
    lines = ["| model | params (M) | MPJPE (mm) | P-MPJPE (mm) | MPJVE (mm) | train s |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f} | {r['mpjpe']:.1f} | {r['p_mpjpe']:.1f} | "
                     f"{r['mpjve'].get('Average', float('nan')):.2f} | {r['train_seconds']:.0f} |")
    for r in report["results"]:
        lines += ["", f"**{r['label']}** per action", "", r["markdown"].strip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receptive-field", type=int, default=9, choices=(9, 27, 81))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--frames", type=int, default=600, help="frames per synthetic sequence")
    parser.add_argument("--noise", type=float, default=2.0, help="2-D keypoint noise in pixels")
    parser.add_argument("--stride", type=int, default=8, help="training windows every N frames")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lr-schedule", default="cosine", choices=("cosine", "exponential"))
    parser.add_argument("--lr-decay", type=float, default=0.95, help="per-epoch factor of the exponential schedule")
    parser.add_argument("--models", nargs="+", default=list(KEYS), choices=KEYS, help="contenders to train")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "pose_synthetic.json"))
    args = parser.parse_args(argv)
    report = run(args.epochs, args.frames, args.noise, args.stride, args.batch, args.lr, Path(args.output),
                 models=contenders(args.receptive_field, args.models), threads=args.threads,
                 receptive_field=args.receptive_field, lr_schedule=args.lr_schedule, lr_decay=args.lr_decay)
    print(summary(report))
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.md')}")


if __name__ == "__main__":
    main()
