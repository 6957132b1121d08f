"""Image-folder data: torchvision's ImageFolder with the usual train/eval transforms.

Evaluation preprocessing follows the model card (the timm convention): resize the shorter side to
``size / crop_pct`` with the card's interpolation, centre-crop ``size``, normalise with mean/std.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from convformer.errors import ConvformerError

from convformer.imageio import IMAGE_SUFFIXES, open_image  # noqa: F401  (shared with SR; re-exported)


def _interp(name: str):
    from torchvision.transforms import InterpolationMode
    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[name]


def eval_transform(size: int, mean, std, crop_pct: float = 1.0, interpolation: str = "bicubic"):
    from torchvision.transforms import v2
    return v2.Compose([v2.ToImage(), v2.Resize(int(round(size / crop_pct)), interpolation=_interp(interpolation),
                                                 antialias=True),
                       v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def train_transform(size: int, mean, std, interpolation: str = "bicubic", randaugment: str | None = None,
                    random_erasing: float = 0.0):
    """RandomResizedCrop + flip; with ``randaugment`` (a timm policy string such as
    "rand-m9-mstd0.5-inc1") or ``random_erasing`` > 0, timm's ImageNet training transform."""
    if randaugment or random_erasing > 0:
        from timm.data import create_transform
        return create_transform(size, is_training=True, auto_augment=randaugment, re_prob=random_erasing,
                                re_mode="pixel", interpolation=interpolation, mean=tuple(mean), std=tuple(std))
    from torchvision.transforms import v2
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, interpolation=_interp(interpolation), antialias=True),
                       v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def image_folder(root: str | Path, transform):
    """torchvision ImageFolder with clear errors for a missing or empty folder."""
    from torchvision.datasets import ImageFolder
    root = Path(root)
    if not root.is_dir():
        raise ConvformerError(f"data folder not found: {root}")
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ConvformerError(f"{root} has no class folders (expected one sub-folder of images per class)")
    for d in classes:
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.rglob("*") if f.is_file()):
            raise ConvformerError(f"class folder {d} has no image files; add images or remove the folder")
    try:
        return ImageFolder(str(root), transform=transform, loader=open_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise ConvformerError(f"{root} is not an image folder (one sub-folder of images per class): "
                              f"{str(err).splitlines()[0]}") from err
