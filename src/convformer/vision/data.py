"""Data sets and transforms: the embedded digits set and image folders (train/ and val/ inside)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from convformer.errors import ConvformerError
from convformer.vision.digits import CLASSES as DIGIT_CLASSES, DigitsDataset, load_digits_tensors
from convformer.vision.digits import MEAN as DIGITS_MEAN, STD as DIGITS_STD
from convformer.vision.images import eval_transform, image_folder, open_image, train_transform


@dataclass
class ImageData:
    train: Dataset | None
    val: Dataset
    classes: list[str]
    mean: tuple
    std: tuple


def build_image_data(data: str, img_size: int, mean=None, std=None, crop_pct: float = 1.0,
                     interpolation: str = "bicubic", need_train: bool = True, randaugment: str | None = None,
                     random_erasing: float = 0.0, scan: bool = False, skip_bad_images: bool = False,
                     progress: bool = True) -> ImageData:
    """``data`` is "digits" or a folder with ``train/`` and ``val/`` sub-folders (ImageFolder style).
    ``scan`` checks every file opens as an image before training (see :mod:`.scan`)."""
    if data == "digits":
        tr_x, tr_y, te_x, te_y = load_digits_tensors(img_size)
        train = DigitsDataset(tr_x, tr_y, train=True, erasing=random_erasing) if need_train else None
        return ImageData(train, DigitsDataset(te_x, te_y, train=False), DIGIT_CLASSES, DIGITS_MEAN, DIGITS_STD)
    root = Path(data)
    if not root.is_dir():
        raise ConvformerError(f"data folder not found: {root} (use 'digits' for the built-in set)")
    mean = mean or (0.485, 0.456, 0.406)
    std = std or (0.229, 0.224, 0.225)
    val_dir = next((root / d for d in ("val", "validation", "test") if (root / d).is_dir()), None)
    if val_dir is None:
        raise ConvformerError(f"{root} needs a val/ (or validation/, test/) sub-folder of class folders")
    val = image_folder(val_dir, eval_transform(img_size, mean, std, crop_pct, interpolation))
    train = None
    if need_train:
        if not (root / "train").is_dir():
            raise ConvformerError(f"{root} needs a train/ sub-folder of class folders")
        train = image_folder(root / "train", train_transform(img_size, mean, std, interpolation, randaugment,
                                                             random_erasing))
        if train.classes != val.classes:
            raise ConvformerError(f"class folders differ between {root / 'train'} and {val_dir}: "
                                  f"{sorted(set(train.classes) ^ set(val.classes))[:5]}")
        if scan:
            from convformer.vision.scan import check_image_folder
            check_image_folder(train, skip_bad_images, progress)
            check_image_folder(val, skip_bad_images, progress)
    return ImageData(train, val, list(val.classes), tuple(mean), tuple(std))


__all__ = ["ImageData", "build_image_data", "open_image", "eval_transform", "train_transform",
           "DigitsDataset", "load_digits_tensors"]
