"""`convformer sr`: super-resolution with CFSR (upscale images, evaluate against high-resolution ones)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import typer

from convformer.engine import options
from convformer.errors import ConvformerError
from convformer.progress import progress_bar
from convformer.sr.config import SRTrainConfig
from convformer.registry import create_model, list_models

app = typer.Typer(no_args_is_help=True, help="Super-resolution: upscale and evaluate (CFSR).")


def _sr_model(model: str, weights: Optional[str], fast: bool = False, runtime: str = "torch"):
    if model not in list_models(task="super-resolution"):
        raise ConvformerError(f"{model!r} is not a super-resolution model; choose one of "
                              f"{', '.join(list_models(task='super-resolution'))}")
    net = create_model(model, pretrained=weights or True).eval()
    from convformer.optimize import for_inference
    return for_inference(net, fast, runtime)


FAST_HELP = "Use the fast inference path (convformer.optimize: same outputs up to float rounding)."
RUNTIME_HELP = ("Inference runtime: torch, onnxruntime, openvino or auto; all but torch imply --fast and "
                "compile one graph per input (or tile) size, so they pay off on many images of one size.")


@app.command("upscale")
def upscale_cmd(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders of images (low resolution)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the upscaled PNGs."),
    model: str = typer.Option("cfsr_x4", help="cfsr_x2, cfsr_x3 or cfsr_x4."),
    weights: Optional[str] = typer.Option(None, help="Weight file [default: the card's official weights]."),
    tile: Optional[int] = typer.Option(None, help="Upscale in tiles of this many LR pixels (bounds memory)."),
    tile_overlap: int = typer.Option(32, help="LR pixels of context around each tile."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP),
):
    """Write <name>_x<scale>.png for every input image."""
    from convformer.sr.data import image_files, load_rgb, save_png
    from convformer.sr.task import upscale
    from convformer.optimize import check_runtime
    check_runtime(runtime)
    files = image_files(inputs)
    net = _sr_model(model, weights, fast, runtime)
    targets = [output / f"{f.stem}_x{net.scale}.png" for f in files]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConvformerError(f"{existing[0]} already exists ({len(existing)} in all); pass --overwrite or "
                              "choose another --output")
    for f, target in progress_bar(list(zip(files, targets)), desc="upscaling", disable=len(files) < 2):
        save_png(upscale(net, load_rgb(f), tile, tile_overlap), target)
    typer.echo(f"wrote {len(files)} image(s) to {output}")


@app.command("eval")
def eval_cmd(
    hr_folder: Path = typer.Argument(..., help="Folder of high-resolution images (LR made by bicubic downsampling)."),
    lr: Optional[Path] = typer.Option(None, "--lr", help="Folder of given LR images, paired with the HR images by "
                                                         "name (e.g. 0001x4.png); default: bicubic downsampling."),
    model: str = typer.Option("cfsr_x4", help="cfsr_x2, cfsr_x3 or cfsr_x4."),
    weights: Optional[str] = typer.Option(None, help="Weight file [default: the card's official weights]."),
    output: Optional[Path] = typer.Option(None, help="Write metrics.csv, metrics.json and strip.png here."),
    tile: Optional[int] = typer.Option(None, help="Upscale in tiles of this many LR pixels."),
    tile_overlap: int = typer.Option(32, help="LR pixels of context around each tile."),
    as_json: bool = typer.Option(False, "--json", help="Print the mean metrics as JSON."),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
):
    """Per-image and mean PSNR/SSIM (Y channel, border = scale) of the model and of bicubic upsampling."""
    from convformer.sr.data import image_files, load_pair, load_rgb, mod_crop, paired_files
    from convformer.sr.task import METRICS, score_image
    net = _sr_model(model, weights, fast)
    s = net.scale
    pairs = paired_files(hr_folder, lr, s) if lr else [(None, f) for f in image_files([hr_folder])]
    rows, crops = [], []
    for lr_file, f in progress_bar(pairs, desc="evaluating", disable=len(pairs) < 2):
        lr_img, hr = load_pair(lr_file, f, s) if lr_file else (None, mod_crop(load_rgb(f), s))
        if min(hr.shape[-2:]) < 2 * s + 11:  # SSIM needs 11x11 after the border crop
            raise ConvformerError(f"{f} is too small to evaluate at x{s} ({hr.shape[-1]}x{hr.shape[-2]})")
        scores, images = score_image(net, lr_img, hr, s, tile, tile_overlap)
        rows.append({"image": f.name, **scores})
        crops.append(images)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in METRICS}
    if output:
        _write_eval(output, rows, mean, crops)
    if as_json:
        typer.echo(json.dumps({"model": model, "images": len(rows), **mean}))
        return
    for r in rows:
        typer.echo(f"{r['image']:<32} {model} {r['psnr']:6.2f} dB / {r['ssim']:.4f}   bicubic "
                   f"{r['bicubic_psnr']:6.2f} dB / {r['bicubic_ssim']:.4f}")
    typer.echo(f"{'mean of ' + str(len(rows)):<32} {model} {mean['psnr']:6.2f} dB / {mean['ssim']:.4f}   bicubic "
               f"{mean['bicubic_psnr']:6.2f} dB / {mean['bicubic_ssim']:.4f}")


def _write_eval(folder: Path, rows: list, mean: dict, crops: list, size: int = 96) -> None:
    """metrics.csv / metrics.json, and strip.png: a centre crop per image, bicubic | model | ground truth."""
    import torch
    from convformer.sr.data import save_png
    from convformer.fileio import atomic_write
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(folder / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    atomic_write(folder / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps({"mean": mean, "images": rows},
                                                                                     indent=1)))
    lines = []
    for images in crops:
        h, w = images[0].shape[-2:]
        c, y, x = min(size, h, w), (h - min(size, h, w)) // 2, (w - min(size, h, w)) // 2
        lines.append(torch.cat([im[:, :, y:y + c, x:x + c] for im in images], dim=3))
    width = max(line.shape[-1] for line in lines)
    lines = [torch.nn.functional.pad(line, (0, width - line.shape[-1])) for line in lines]
    save_png(torch.cat(lines, dim=2), folder / "strip.png")


@app.command("train")
@options.uses_config(SRTrainConfig)
def train_cmd(
    model: Optional[str] = typer.Option(None, help="cfsr_x2, cfsr_x3 or cfsr_x4 [default: cfsr_x2]."),
    data: Optional[str] = typer.Option(None, help="'photos' (scikit-image's bundled photos) or a folder of HR images."),
    val: Optional[str] = typer.Option(None, help="Folder of HR validation images [photos: the held-out photos]."),
    data_lr: Optional[str] = typer.Option(None, help="Folder of given LR images paired with --data by name "
                                                     "[default: bicubic downsampling]."),
    val_lr: Optional[str] = typer.Option(None, help="Folder of given LR images paired with --val by name."),
    train_photos: Optional[str] = typer.Option(None, help="With --data photos: comma-separated photos to train on."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (a multiple of --eval-every) [default: 2000]."),
    batch_size: Optional[int] = typer.Option(None, help="Patches per step and process [default: 16]."),
    accum_steps: options.AccumSteps = None,
    patch: Optional[int] = typer.Option(None, help="LR patch size [default: 48]."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate [default: 2e-4]."),
    lr_schedule: Optional[str] = typer.Option(None, help="constant, cosine or exponential [default: constant]."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay of the weights [default: 0.999]."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate and save weights every N steps [default: 250]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps [default: 250]."),
    grad_clip: options.GradClip = None,
    precision: options.Precision = None,
    pretrained: Optional[str] = typer.Option(None, help="Weight file to start from."),
    resume: options.Resume = None,
    skip_nonfinite: options.SkipNonfinite = None,
    deterministic: options.Deterministic = None,
    tensorboard: options.Tensorboard = None,
    seed: options.Seed = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    device: options.Device = None,
    output: options.Output = None,
    name: options.Name = None,
    config: options.Config = None,
    quiet: options.Quiet = False,
):
    """Train a super-resolution model (L1 loss, Adam, EMA) through the training engine: run folder, exact
    resume, torchrun DDP and the NaN guard as `convformer train`."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    cfg, result = options.run_training_command(SRTrainConfig, config, flags, quiet)
    if not result["main"] or result.get("val_psnr") is None:
        return
    ema = f"; EMA {result['ema_val_psnr']:.2f} dB / {result['ema_val_ssim']:.4f}" if result.get("ema_val_psnr") else ""
    typer.echo(f"{cfg.model}: validation PSNR {result['val_psnr']:.2f} dB / SSIM {result['val_ssim']:.4f} "
               f"(bicubic {result['val_bicubic_psnr']:.2f} dB / {result['val_bicubic_ssim']:.4f}{ema}) after "
               f"{result['steps']} steps in {result['seconds']:.0f}s")
    typer.echo(f"run folder: {result['folder']}")
