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
def _sr_items(cfg, scale: int) -> tuple[list, list, list[str]]:
    """(train items, val items, val names); an item is (LR or None, HR), each (1, 3, H, W) in [0, 1].
    LR is None where it is made by bicubic downsampling; given LR/HR pairs come from --data-lr / --val-lr."""
    from ..data.sr import BUNDLED_PHOTOS, bundled_photo, image_files, load_pair, load_rgb, paired_files

    def folder_items(hr_folder, lr_folder):
        if lr_folder:
            pairs = paired_files(hr_folder, lr_folder, scale)
            return [load_pair(lr, hr, scale) for lr, hr in pairs], [hr.name for _, hr in pairs]
        files = image_files([hr_folder])
        return [(None, load_rgb(f)) for f in files], [f.name for f in files]

    if cfg.val_lr and not cfg.val:
        raise ConvformerError("--val-lr needs --val (the HR validation images it pairs with)")
    if cfg.data == "photos":
        if cfg.data_lr:
            raise ConvformerError("--data-lr pairs with a folder of HR images; pass --data FOLDER")
        chosen = [p for p in cfg.train_photos.split(",") if p]
        unknown = [p for p in chosen if p not in BUNDLED_PHOTOS]
        if unknown or not chosen:
            raise ConvformerError(f"--train-photos must name bundled photos ({', '.join(BUNDLED_PHOTOS)}); got {unknown}")
        train = [(None, bundled_photo(p)) for p in chosen]
        if cfg.val:
            return (train, *folder_items(cfg.val, cfg.val_lr))
        val_names = [p for p in BUNDLED_PHOTOS if p not in chosen]
        if not val_names:
            raise ConvformerError("every bundled photo is used for training; leave some out or pass --val")
        return train, [(None, bundled_photo(p)) for p in val_names], val_names
    if not cfg.val:
        raise ConvformerError("pass --val FOLDER of HR validation images when --data is a folder")
    train, _ = folder_items(cfg.data, cfg.data_lr)
    return (train, *folder_items(cfg.val, cfg.val_lr))


def random_patches(items: list, n: int, patch: int, scale: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (LR, HR) crops, LR ``patch`` pixels square, with random flips and 90-degree rotations,
    drawn from ``seed`` alone. Items are (LR or None, HR); without a given LR the HR crop is downsampled."""
    from ..data.sr import bicubic_down
    g = torch.Generator().manual_seed(seed)
    hr_size = patch * scale
    usable = [it for it in items if min(it[1].shape[-2:]) >= hr_size]
    if not usable:
        raise ConvformerError(f"no training image is at least {hr_size}x{hr_size}; lower --patch")
    lrs, hrs = [], []
    for _ in range(n):
        lr, hr = usable[int(torch.randint(len(usable), (1,), generator=g))]
        y = int(torch.randint(hr.shape[-2] // scale - patch + 1, (1,), generator=g)) * scale
        x = int(torch.randint(hr.shape[-1] // scale - patch + 1, (1,), generator=g)) * scale
        crops = [hr[0, :, y:y + hr_size, x:x + hr_size]]
        if lr is not None:
            crops.append(lr[0, :, y // scale:y // scale + patch, x // scale:x // scale + patch])
        if torch.rand(1, generator=g) < 0.5:
            crops = [c.flip(-1) for c in crops]
        if torch.rand(1, generator=g) < 0.5:
            crops = [c.flip(-2) for c in crops]
        k = int(torch.randint(4, (1,), generator=g))
        crops = [torch.rot90(c, k, dims=(-2, -1)) for c in crops]
        hrs.append(crops[0])
        lrs.append(crops[1] if lr is not None else None)
    hr = torch.stack(hrs)
    if all(lr is None for lr in lrs):
        return bicubic_down(hr, scale), hr
    if any(lr is None for lr in lrs):
        raise ConvformerError("mix of given and bicubic LR images in one training set")
    return torch.stack(lrs), hr


METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")


def score_image(model, lr: torch.Tensor | None, hr: torch.Tensor, scale: int, tile: int | None = None,
                overlap: int = 32) -> tuple[dict, tuple]:
    """Y-channel PSNR/SSIM (border = scale) of the model and of bicubic upsampling on one image.

    ``hr`` is cropped to a multiple of ``scale``; ``lr`` None is made from it by bicubic downsampling.
    Returns ({"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}, (bicubic, model output, HR))."""
    from ..data.sr import bicubic_down, bicubic_up, mod_crop
    from .sr_metrics import psnr_y, ssim_y
    hr = mod_crop(hr, scale)
    lr = bicubic_down(hr, scale) if lr is None else lr
    sr, bic = upscale(model, lr, tile, overlap), bicubic_up(lr, scale)
    return {"psnr": psnr_y(sr, hr, scale), "ssim": ssim_y(sr, hr, scale), "bicubic_psnr": psnr_y(bic, hr, scale),
            "bicubic_ssim": ssim_y(bic, hr, scale)}, (bic, sr, hr)


def evaluate_sr(model, items: list, scale: int) -> dict:
    """Mean of ``score_image`` over (LR or None, HR) items."""
    was = model.training
    model.eval()
    scores = [score_image(model, lr, hr, scale)[0] for lr, hr in items]
    model.train(was)
    return {k: sum(s[k] for s in scores) / len(scores) for k in METRICS}


def train_sr(cfg, progress: bool = True, log=print) -> dict:
    """Train a super-resolution model with L1 loss and Adam; checkpoints, EMA and exact resume as in
    :mod:`.train` (every batch is drawn from (seed, step) alone)."""
    import json
    import time
    from pathlib import Path

    from ..progress import progress_bar, write as progress_write

    from ..registry import create_model, list_models
    from ..weights import save_weights
    from ..fileio import atomic_write
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
    model = create_model(cfg.model, merged=False)
    scale = model.scale
    train_items, val_items, val_names = _sr_items(cfg, scale)
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
    bar = progress_bar(total=cfg.steps, initial=step, desc=f"training {cfg.model}", disable=not progress, unit="step")
    model.train()
    while step < cfg.steps:
        lr, hr = random_patches(train_items, cfg.batch_size, cfg.patch, scale, mix_seed(cfg.seed, step))
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
            val = evaluate_sr(net, val_items, scale)
            row = {"step": step, "train_l1": round(loss_sum / max(seen, 1), 5),
                   **{k: round(v, 4) for k, v in val.items()}, "time_s": round(time.time() - start, 1)}
            loss_sum, seen = 0.0, 0
            log_rows.append(row)
            save_weights(net, folder / "last.safetensors", metadata={**meta, "step": str(step)})
            if val["psnr"] > best:
                best = val["psnr"]
                save_weights(net, folder / "best.safetensors", metadata={**meta, "step": str(step)})
            if progress:
                progress_write(f"step {step:6d}  L1 {row['train_l1']:.4f}  val PSNR {val['psnr']:.2f} dB "
                           f"(bicubic {val['bicubic_psnr']:.2f})  SSIM {val['ssim']:.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_train_state(folder / "checkpoint.safetensors", model, optimizer, ema, None,
                             {"epoch": 0, "step_in_epoch": 0, "global_step": step, "best_top1": best,
                              "sums": [0, 0, 0], "model": cfg.model})
    bar.close()
    final = log_rows.rows[-1] if log_rows.rows else {}
    return {"folder": str(folder), "steps": step, "seconds": round(time.time() - start, 1), **final}
