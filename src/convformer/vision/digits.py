"""The embedded default data set: scikit-learn's bundled handwritten digits (no download).

1,797 real 8x8 grey images of the digits 0-9, shipped inside scikit-learn. We upsample them to the
requested size (bilinear), repeat the grey channel to RGB so the same models and transforms serve real
photos, and keep a fixed stratified 80/20 train/test split (seed 0) so results are comparable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CLASSES = [str(i) for i in range(10)]


def load_digits_tensors(img_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_images, train_labels, test_images, test_labels); images (N, 3, S, S) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx = torch.arange(len(labels)).numpy()
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=labels.numpy())
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


class DigitsDataset(Dataset):
    """Digits as normalised tensors; ``train=True`` adds small random shifts, rotations and scalings."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool, erasing: float = 0.0):
        from torchvision.transforms import v2
        self.images, self.labels = images, labels
        self.normalize = v2.Normalize(MEAN, STD)
        self.augment = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)) if train else None
        self.erase = v2.RandomErasing(p=erasing, value=0) if train and erasing > 0 else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.augment is not None:
            x = self.augment(x)
        x = self.normalize(x)
        return (self.erase(x) if self.erase is not None else x), self.labels[i]
