"""Super-resolution data: the standard bicubic degradation, given LR/HR pairs, and scikit-image's
bundled photographs.

Without given LR images, the low-resolution image is the high-resolution one downsampled by bicubic
interpolation (with anti-aliasing, the convention of the SR benchmarks), after cropping the HR image to
a multiple of the scale so that sizes match exactly. With a folder of LR images (any degradation), each
HR image is paired with the LR file of the same name, optionally with the usual ``x4`` / ``_x4`` suffix
(DIV2K's ``0001x4.png``), in the same subfolder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: real photographs shipped inside scikit-image (no download)
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, H/s, W/s), bicubic with anti-aliasing, clamped to [0, 1]."""
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic").clamp(0, 1)


def bundled_photo(name: str) -> torch.Tensor:
    """One of scikit-image's bundled RGB photographs as (1, 3, H, W) in [0, 1]."""
    from skimage import data
    from convformer.errors import ConvformerError
    if name not in BUNDLED_PHOTOS:
        raise ConvformerError(f"unknown bundled photo {name!r}; choose from {', '.join(BUNDLED_PHOTOS)}")
    img = torch.from_numpy(getattr(data, name)()[..., :3].copy())
    return img.permute(2, 0, 1).float()[None] / 255


def image_files(paths) -> list:
    """Image files named directly or found (sorted, recursively) inside the given folders."""
    from pathlib import Path
    from convformer.errors import ConvformerError
    from convformer.imageio import IMAGE_SUFFIXES
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConvformerError(f"no image files in folder {p}")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise ConvformerError(f"image not found: {p}")
    return files


def paired_files(hr_folder, lr_folder, scale: int) -> list:
    """[(lr file, hr file)] for every HR image in ``hr_folder``, matched by relative path and name."""
    from pathlib import Path
    from convformer.errors import ConvformerError
    hr_folder, lr_folder = Path(hr_folder), Path(lr_folder)
    if not lr_folder.is_dir():
        raise ConvformerError(f"LR folder not found: {lr_folder}")
    lr_files = {}
    for f in image_files([lr_folder]):
        rel = f.relative_to(lr_folder)
        lr_files[rel.with_suffix("").as_posix()] = f
    pairs, missing = [], []
    for hr in image_files([hr_folder]):
        rel = hr.relative_to(hr_folder).with_suffix("").as_posix()
        lr = next((lr_files[k] for k in (rel, f"{rel}x{scale}", f"{rel}_x{scale}", f"{rel}_X{scale}")
                   if k in lr_files), None)
        if lr is None:
            missing.append(hr.relative_to(hr_folder).as_posix())
        else:
            pairs.append((lr, hr))
    if missing:
        raise ConvformerError(f"no LR image in {lr_folder} for {missing[0]}" +
                              (f" and {len(missing) - 1} more" if len(missing) > 1 else "") +
                              f" (LR files are matched by name, optionally with an x{scale} or _x{scale} suffix)")
    return pairs


def load_pair(lr_file, hr_file, scale: int) -> tuple:
    """(LR, HR) tensors of a given pair, the HR image mod-cropped; the sizes must agree with the scale."""
    from convformer.errors import ConvformerError
    lr, hr = load_rgb(lr_file), mod_crop(load_rgb(hr_file), scale)
    if (lr.shape[-2] * scale, lr.shape[-1] * scale) != tuple(hr.shape[-2:]):
        raise ConvformerError(f"{lr_file} is {lr.shape[-1]}x{lr.shape[-2]} but {hr_file} is "
                              f"{hr.shape[-1]}x{hr.shape[-2]} (after cropping to a multiple of {scale}); "
                              f"at x{scale} the LR image must be exactly 1/{scale} of the HR size")
    return lr, hr


def load_rgb(path) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [0, 1] (clear error for missing or corrupt files)."""
    import numpy as np
    from convformer.imageio import open_image
    arr = np.asarray(open_image(path), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None] / 255


def save_png(img: torch.Tensor, path) -> None:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit PNG, written atomically."""
    from PIL import Image
    from convformer.fileio import atomic_write
    arr = (img.reshape(3, *img.shape[-2:]).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
