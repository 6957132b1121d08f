"""Which token mixer in which stage? Three mixes of one tiny MetaFormer trained on the bundled digits.

The network is `convformer_nano`'s (depths 2,2,4,2; dims 32,64,128,192; MLP head; 32x32 input) built from
the configurable `metaformer` model, with only the mixers changed:

* A, ConvFormer-like: sepconv in every stage (the same network as `convformer_nano`);
* B, CAFormer-like: sepconv, sepconv, then softmax attention in the last two stages;
* C, LowFormer-like: sepconv, sepconv, then Lowtention (attention on a downsampled, thinner map).

Every mix is trained by the engine `convformer train` uses, with its default digits recipe (data, split,
batch, lr, schedule, augmentation, seed) and the same epoch budget, one after the other. Then the three
trained networks are timed at batch 32 in interleaved rounds, so machine drift hits all of them alike.

    python benchmarks/mixer_mix_digits.py [--epochs 10] [--repeats 10]

Prints a Markdown table and writes benchmarks/results/mixer_mix_digits.json and .md.
"""

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Subset

from convformer import create_model, load_weights
from convformer.bench import count_macs, count_params
from convformer.bench.measure import interleaved, machine_info
from convformer.vision.config import TrainConfig
from convformer.vision.task import ImageClassification
from convformer.engine.train import train

NANO = dict(depths=[2, 2, 4, 2], dims=[32, 64, 128, 192])
MIXES = {
    "A: ConvFormer-like": ["sepconv", "sepconv", "sepconv", "sepconv"],
    "B: CAFormer-like": ["sepconv", "sepconv", "attention", "attention"],
    "C: LowFormer-like": ["sepconv", "sepconv", "lowtention", "lowtention"],
}
IMG, BATCH = 32, 32
RESULTS = Path(__file__).parent / "results"


class LimitedClassification(ImageClassification):
    """The digits task on the first ``limit`` training and test images: only for a quick smoke run."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit

    def build(self, cfg, progress):
        data = super().build(cfg, progress)
        if self.limit:
            data.train = Subset(data.train, range(min(self.limit, len(data.train))))
            data.val = Subset(data.val, range(min(self.limit, len(data.val))))
        return data


@dataclass
class StudyConfig(TrainConfig):
    """`convformer train`'s configuration (defaults = the digits demo) plus an optional data limit."""
    limit: Optional[int] = None

    def task(self):
        return LimitedClassification(self.limit)


def train_mix(mixers: list[str], epochs: int, output: str, limit: Optional[int]) -> dict:
    cfg = StudyConfig(model="metaformer", model_kwargs={**NANO, "mixers": mixers}, epochs=epochs,
                      output=output, name="-".join(mixers), limit=limit)
    result = train(cfg, progress=False, log=lambda *_: None)
    return {"mixers": mixers, "test_top1": result["val_top1"], "train_seconds": result["seconds"],
            "weights": str(Path(result["folder"]) / "last.safetensors"), "recipe": asdict(cfg)}


def trained_model(row: dict) -> torch.nn.Module:
    model = create_model("metaformer", num_classes=10, img_size=IMG, mixers=row["mixers"], **NANO)
    load_weights(model, row["weights"])
    return model.eval()


def run_study(epochs: int, repeats: int, limit: Optional[int] = None, output: Optional[str] = None) -> dict:
    """Train every mix, then count and time the trained networks; returns the report."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = {label: train_mix(mixers, epochs, output or tmp, limit) for label, mixers in MIXES.items()}
        models = {label: trained_model(row) for label, row in rows.items()}
    x = torch.randn(BATCH, 3, IMG, IMG)

    def forward(model):
        def run():
            with torch.inference_mode():
                model(x)
        return run
    timings = interleaved({label: forward(m) for label, m in models.items()}, warmup=2, repeats=repeats)
    for label, row in rows.items():
        model = models[label]
        row.update(params=count_params(model), macs=count_macs(model, (3, IMG, IMG)),
                   img_per_s=timings[label].summary(BATCH)["per_s"], timing=timings[label].summary(BATCH))
        row.pop("weights")
    recipe = rows[next(iter(rows))]["recipe"]
    for row in rows.values():
        row.pop("recipe")
    return {"settings": {"epochs": epochs, "limit": limit, "img_size": IMG, "batch_timed": BATCH, "repeats": repeats,
                         "torch_threads": torch.get_num_threads(), "machine": machine_info(),
                         "recipe": {k: recipe[k] for k in ("data", "batch_size", "lr", "weight_decay", "warmup_epochs",
                                                           "label_smoothing", "drop_path_rate", "seed")},
                         "layout": NANO},
            "results": [{"mix": label, **row} for label, row in rows.items()]}


def markdown_table(report: dict) -> str:
    lines = ["| mix | mixers per stage | params | MACs (M) | test top-1 (%) | train time (s) | img/s (b32) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['mix']} | {', '.join(r['mixers'])} | {r['params']:,} | {r['macs'] / 1e6:.1f} | "
                     f"{r['test_top1']:.2f} | {r['train_seconds']:.0f} | {r['img_per_s']:.0f} |")
    s = report["settings"]
    lines.append(f"\n{s['epochs']} epochs each, digits at {s['img_size']}x{s['img_size']}, batch {s['recipe']['batch_size']}, "
                 f"lr {s['recipe']['lr']}, seed {s['recipe']['seed']}; params at 10 classes; throughput: median of "
                 f"{s['repeats']} interleaved batch-{s['batch_timed']} forwards, {s['torch_threads']} threads.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10, help="Timed rounds of the throughput measurement.")
    parser.add_argument("--limit", type=int, default=None, help="Use only this many train/test images (smoke runs).")
    parser.add_argument("--out", default=str(RESULTS / "mixer_mix_digits"), help="Output path without suffix.")
    args = parser.parse_args(argv)
    report = run_study(args.epochs, args.repeats, args.limit)
    table = markdown_table(report)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text("# Mixer mixes on digits\n\n" + table + "\n")


if __name__ == "__main__":
    main()
