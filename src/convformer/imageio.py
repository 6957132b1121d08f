"""Reading image files with errors that name the file: the one place every system opens images."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from convformer.errors import ConvformerError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def open_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, or raise ConvformerError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConvformerError(f"image not found: {path}")
    if path.is_dir():
        raise ConvformerError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ConvformerError(f"cannot read {path}: not an image file or corrupt ({type(err).__name__})") from err
