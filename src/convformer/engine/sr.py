"""Super-resolution inference: whole images or tiles, for images too large to upscale in one pass.

Tiling splits the LR image into ``tile`` x ``tile`` cores; each core is upscaled together with up to
``overlap`` pixels of surrounding context on every side, and only the core's part of the result is kept.
The cores tile the output without seams or blending, and with enough context (more than the network's
receptive field) the result equals the untiled one; with less it differs only near core edges.
"""
from __future__ import annotations

import torch

from ..errors import ConvformerError


@torch.inference_mode()
def upscale(model, lr: torch.Tensor, tile: int | None = None, overlap: int = 32) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, sH, sW) in [0, 1]; ``tile`` (LR pixels) bounds the memory used."""
    scale = model.scale
    if not tile or (lr.shape[-2] <= tile and lr.shape[-1] <= tile):
        return model(lr).clamp(0, 1)
    if tile < 8 or overlap < 0:
        raise ConvformerError(f"--tile must be at least 8 and --tile-overlap at least 0 (got {tile}, {overlap})")
    b, _, h, w = lr.shape
    out = lr.new_empty(b, 3, h * scale, w * scale)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            cy0, cx0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            cy1, cx1 = min(y1 + overlap, h), min(x1 + overlap, w)
            sr = model(lr[:, :, cy0:cy1, cx0:cx1])
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                sr[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out.clamp(0, 1)


# ---- training ----------------------------------------------------------------------------------------------
def _hr_images(cfg) -> tuple[list, list, list[str]]:
    """(train HR images, val HR images, val names), each (1, 3, H, W) in [0, 1]."""
    from ..data.sr import BUNDLED_PHOTOS, bundled_photo, image_files, load_rgb
    if cfg.data == "photos":
        chosen = [p for p in cfg.train_photos.split(",") if p]
        unknown = [p for p in chosen if p not in BUNDLED_PHOTOS]
        if unknown or not chosen:
            raise ConvformerError(f"--train-photos must name bundled photos ({', '.join(BUNDLED_PHOTOS)}); got {unknown}")
        train = [bundled_photo(p) for p in chosen]
        val_names = [p for p in BUNDLED_PHOTOS if p not in chosen]
        if cfg.val:
            val_files = image_files([cfg.val])
            return train, [load_rgb(f) for f in val_files], [f.name for f in val_files]
        if not val_names:
            raise ConvformerError("every bundled photo is used for training; leave some out or pass --val")
        return train, [bundled_photo(p) for p in val_names], val_names
    train_files = image_files([cfg.data])
    val_files = image_files([cfg.val]) if cfg.val else []
    if not val_files:
        raise ConvformerError("pass --val FOLDER of HR validation images when --data is a folder")
    return [load_rgb(f) for f in train_files], [load_rgb(f) for f in val_files], [f.name for f in val_files]


def random_patches(images: list, n: int, hr_size: int, seed: int) -> torch.Tensor:
    """``n`` random HR crops with random flips and 90-degree rotations, drawn from ``seed`` alone."""
    g = torch.Generator().manual_seed(seed)
    usable = [im for im in images if min(im.shape[-2:]) >= hr_size]
    if not usable:
        raise ConvformerError(f"no training image is at least {hr_size}x{hr_size}; lower --patch")
    out = []
    for _ in range(n):
        im = usable[int(torch.randint(len(usable), (1,), generator=g))]
        y = int(torch.randint(im.shape[-2] - hr_size + 1, (1,), generator=g))
        x = int(torch.randint(im.shape[-1] - hr_size + 1, (1,), generator=g))
        p = im[0, :, y:y + hr_size, x:x + hr_size]
        if torch.rand(1, generator=g) < 0.5:
            p = p.flip(-1)
        if torch.rand(1, generator=g) < 0.5:
            p = p.flip(-2)
        p = torch.rot90(p, int(torch.randint(4, (1,), generator=g)), dims=(-2, -1))
        out.append(p)
    return torch.stack(out)


def evaluate_sr(model, images: list, scale: int) -> dict:
    """Mean Y-channel PSNR/SSIM of the model and of bicubic on HR images (LR by bicubic downsampling)."""
    from ..data.sr import bicubic_down, bicubic_up, mod_crop
    from .sr_metrics import psnr_y, ssim_y
    was = model.training
    model.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "bicubic_psnr": 0.0, "bicubic_ssim": 0.0}
    for im in images:
        hr = mod_crop(im, scale)
        lr = bicubic_down(hr, scale)
        sr, bic = upscale(model, lr), bicubic_up(lr, scale)
        sums["psnr"] += psnr_y(sr, hr, scale)
        sums["ssim"] += ssim_y(sr, hr, scale)
        sums["bicubic_psnr"] += psnr_y(bic, hr, scale)
        sums["bicubic_ssim"] += ssim_y(bic, hr, scale)
    model.train(was)
    return {k: v / len(images) for k, v in sums.items()}


def train_sr(cfg, progress: bool = True, log=print) -> dict:
    """Train a super-resolution model with L1 loss and Adam; checkpoints, EMA and exact resume as in
    :mod:`.train` (every batch is drawn from (seed, step) alone)."""
    import json
    import time
    from pathlib import Path

    from tqdm import tqdm

    from ..data.sr import bicubic_down
    from ..registry import create_model, list_models
    from ..weights import save_weights
    from ..weights.io import atomic_write
    from .config import config_dict
    from .ema import ModelEma
    from .metrics import MetricLog
    from .sampler import mix_seed
    from .state import load_train_state, read_train_state, save_train_state

    resume_state = None
    if cfg.resume:
        resume_state = read_train_state(cfg.resume)
        folder = Path(cfg.resume) if Path(cfg.resume).is_dir() else Path(cfg.resume).parent
        saved = json.loads((folder / "config.json").read_text())
        cfg = type(cfg)(**{**saved, "resume": cfg.resume, "threads": cfg.threads})
    if cfg.model not in list_models(task="super-resolution"):
        raise ConvformerError(f"{cfg.model!r} is not a super-resolution model; choose one of "
                              f"{', '.join(list_models(task='super-resolution'))}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_images, val_images, val_names = _hr_images(cfg)
    model = create_model(cfg.model, merged=False)
    scale = model.scale
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
    step, best = 0, -1.0
    if resume_state is not None:
        info = load_train_state(*resume_state, model, optimizer, ema, None)
        step, best = info["global_step"], info["best_top1"]
    else:
        from .train import run_folder
        folder = run_folder(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config_dict(cfg), indent=1)))
    log_rows = MetricLog(folder)
    if resume_state is not None and (folder / "metrics.json").exists():
        log_rows.rows = [r for r in json.loads((folder / "metrics.json").read_text()) if r["step"] <= step]
    meta = {"scale": str(scale), "val_images": json.dumps(val_names)}
    start, loss_sum, seen = time.time(), 0.0, 0
    bar = tqdm(total=cfg.steps, initial=step, desc=f"training {cfg.model}", disable=not progress, unit="step")
    model.train()
    while step < cfg.steps:
        hr = random_patches(train_images, cfg.batch_size, cfg.patch * scale, mix_seed(cfg.seed, step))
        lr = bicubic_down(hr, scale)
        loss = torch.nn.functional.l1_loss(model(lr), hr)
        if not torch.isfinite(loss):
            raise ConvformerError(f"loss became {loss.item()} at step {step + 1}; stopped, the last checkpoint in "
                                  f"{folder} is kept (lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        step += 1
        loss_sum, seen = loss_sum + loss.item(), seen + 1
        bar.update(1)
        bar.set_postfix(l1=f"{loss.item():.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            net = ema.module if ema is not None else model
            val = evaluate_sr(net, val_images, scale)
            row = {"step": step, "train_l1": round(loss_sum / max(seen, 1), 5),
                   **{k: round(v, 4) for k, v in val.items()}, "time_s": round(time.time() - start, 1)}
            loss_sum, seen = 0.0, 0
            log_rows.append(row)
            save_weights(net, folder / "last.safetensors", metadata={**meta, "step": str(step)})
            if val["psnr"] > best:
                best = val["psnr"]
                save_weights(net, folder / "best.safetensors", metadata={**meta, "step": str(step)})
            if progress:
                tqdm.write(f"step {step:6d}  L1 {row['train_l1']:.4f}  val PSNR {val['psnr']:.2f} dB "
                           f"(bicubic {val['bicubic_psnr']:.2f})  SSIM {val['ssim']:.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_train_state(folder / "checkpoint.safetensors", model, optimizer, ema, None,
                             {"epoch": 0, "step_in_epoch": 0, "global_step": step, "best_top1": best,
                              "sums": [0, 0, 0], "model": cfg.model})
    bar.close()
    final = log_rows.rows[-1] if log_rows.rows else {}
    return {"folder": str(folder), "steps": step, "seconds": round(time.time() - start, 1), **final}
