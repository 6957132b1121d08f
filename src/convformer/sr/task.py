"""Super-resolution: inference (whole images or tiles), PSNR/SSIM scoring, and the training task.

Training goes through the engine's one loop (:mod:`convformer.engine.train`: run folders, exact resume,
DDP, EMA, the NaN guard). :class:`SuperResolution` gives it random LR/HR patch pairs, each drawn from the
engine's per-sample seed (so a resumed run replays the same patches), an L1 loss, and validation PSNR/SSIM
on whole images beside the bicubic baseline. An "epoch" of the engine is ``eval_every`` optimizer steps.

Tiled inference for images too large to upscale in one pass:

Tiling splits the LR image into ``tile`` x ``tile`` cores; each core is upscaled together with up to
``overlap`` pixels of surrounding context on every side, and only the core's part of the result is kept.
The cores tile the output without seams or blending, and with enough context (more than the network's
receptive field) the result equals the untiled one; with less it differs only near core edges.
"""
from __future__ import annotations

import json

import torch
from torch.utils.data import Dataset

from convformer.engine.tasks import Task, TaskData
from convformer.errors import ConvformerError
from convformer.registry import list_models


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
    from convformer.sr.data import BUNDLED_PHOTOS, bundled_photo, image_files, load_pair, load_rgb, paired_files

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


METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")


def score_image(model, lr: torch.Tensor | None, hr: torch.Tensor, scale: int, tile: int | None = None,
                overlap: int = 32) -> tuple[dict, tuple]:
    """Y-channel PSNR/SSIM (border = scale) of the model and of bicubic upsampling on one image.

    ``hr`` is cropped to a multiple of ``scale``; ``lr`` None is made from it by bicubic downsampling.
    Returns ({"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}, (bicubic, model output, HR))."""
    from convformer.sr.data import bicubic_down, bicubic_up, mod_crop
    from convformer.sr.metrics import psnr_y, ssim_y
    hr = mod_crop(hr, scale)
    lr = bicubic_down(hr, scale) if lr is None else lr
    sr, bic = upscale(model, lr, tile, overlap), bicubic_up(lr, scale)
    return {"psnr": psnr_y(sr, hr, scale), "ssim": ssim_y(sr, hr, scale), "bicubic_psnr": psnr_y(bic, hr, scale),
            "bicubic_ssim": ssim_y(bic, hr, scale)}, (bic, sr, hr)


def evaluate_sr(model, items: list, scale: int) -> dict:
    """Mean of ``score_image`` over (LR or None, HR) items, plus the mean L1 distance of the model's output
    to the (mod-cropped) HR image as ``l1``."""
    was = model.training
    model.eval()
    scores = []
    for lr, hr in items:
        score, (_, sr, hr_crop) = score_image(model, lr, hr, scale)
        scores.append({**score, "l1": float((sr - hr_crop).abs().mean())})
    model.train(was)
    return {k: sum(s[k] for s in scores) / len(scores) for k in (*METRICS, "l1")}



def random_patch(item: tuple, patch: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One random (LR, HR) crop of an item (LR or None, HR), LR ``patch`` pixels square, with a random flip
    in each direction and a random 90-degree rotation, drawn from torch's global generator (which the
    engine seeds per sample). Without a given LR the HR crop is downsampled bicubically."""
    from convformer.sr.data import bicubic_down
    lr, hr = item
    hr_size = patch * scale
    y = int(torch.randint(hr.shape[-2] // scale - patch + 1, (1,))) * scale
    x = int(torch.randint(hr.shape[-1] // scale - patch + 1, (1,))) * scale
    crops = [hr[0, :, y:y + hr_size, x:x + hr_size]]
    if lr is not None:
        crops.append(lr[0, :, y // scale:y // scale + patch, x // scale:x // scale + patch])
    if torch.rand(1) < 0.5:
        crops = [c.flip(-1) for c in crops]
    if torch.rand(1) < 0.5:
        crops = [c.flip(-2) for c in crops]
    k = int(torch.randint(4, (1,)))
    crops = [torch.rot90(c, k, dims=(-2, -1)).contiguous() for c in crops]
    if lr is None:
        return bicubic_down(crops[0][None], scale)[0], crops[0]
    return crops[1], crops[0]


class PatchSet(Dataset):
    """``length`` random patch pairs from the training images: item ``i`` picks an image and a crop with the
    generator state the engine set for it, so the same (seed, epoch, index) always gives the same patch."""

    def __init__(self, items: list, length: int, patch: int, scale: int):
        self.items = [it for it in items if min(it[1].shape[-2:]) >= patch * scale]
        if not self.items:
            raise ConvformerError(f"no training image is at least {patch * scale}x{patch * scale}; lower --patch")
        self.length, self.patch, self.scale = length, patch, scale

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        item = self.items[int(torch.randint(len(self.items), (1,)))]
        return random_patch(item, self.patch, self.scale)


class SuperResolution(Task):
    """L1 training on random patches; validation PSNR/SSIM (Y channel) on whole images."""
    name = "super-resolution"
    train_stat = "l1"
    val_metrics = METRICS
    best_metric = "psnr"
    curve = ("psnr", "PSNR", "PSNR (dB)")

    def build(self, cfg, progress: bool) -> TaskData:
        from convformer.registry import model_card
        choices = list_models(task="super-resolution")
        if cfg.model not in choices:
            raise ConvformerError(f"{cfg.model!r} is not a super-resolution model; choose one of {', '.join(choices)}")
        scale = int(model_card(cfg.model).preprocessing["scale"])
        cfg.epochs  # checks --steps against --eval-every before any image is read
        train_items, val_items, val_names = _sr_items(cfg, scale)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # one engine epoch = eval_every optimizer steps of the global batch
        length = cfg.eval_every * cfg.batch_size * cfg.accum_steps * world
        self.scale = scale
        meta = {"scale": str(scale), "val_images": json.dumps(val_names)}
        return TaskData(PatchSet(train_items, length, cfg.patch, scale), val_items, {"merged": False},
                        resolved={"scale": scale, "val_images": val_names}, meta=meta, val_collate=_as_list)

    def loss(self, output, target):
        return torch.nn.functional.l1_loss(output.float(), target)

    def statistic(self, output, target) -> float:
        return float((output.float() - target).abs().mean()) * len(target)

    def evaluate(self, model, loader, device) -> dict:
        items = [(None if lr is None else lr.to(device), hr.to(device)) for batch in loader for lr, hr in batch]
        if not items:
            return {"loss": 0.0, **{k: 0.0 for k in METRICS}, "count": 0}
        scores = evaluate_sr(model, items, self.scale)
        return {"loss": scores.pop("l1"), **scores, "count": len(items)}

    def summary(self, row: dict) -> str:
        ema = f"  EMA PSNR {row['ema_val_psnr']:.2f} dB" if "ema_val_psnr" in row else ""
        return (f"step {row['step']:6d}  L1 {row['train_loss']:.4f}  val PSNR {row['val_psnr']:.2f} dB "
                f"(bicubic {row['val_bicubic_psnr']:.2f})  SSIM {row['val_ssim']:.4f}{ema}")


def _as_list(items: list) -> list:
    return items


def train_sr(cfg, progress: bool = True, log=print) -> dict:
    """Deprecated: SR trains through the engine; this is ``convformer.engine.train(cfg)``."""
    import warnings
    from convformer.engine.train import train
    warnings.warn("convformer.sr.task.train_sr is deprecated; call convformer.engine.train(SRTrainConfig(...))",
                  DeprecationWarning, stacklevel=2)
    return train(cfg, progress=progress, log=log)
