"""A fast scan of an image folder before training: every file must open as an image.

Hours into a run is the wrong time to learn that one file in a million is truncated. The scan opens
each file's header and lets PIL verify its structure (no full decode), on a thread pool, with a progress
bar. Bad files stop the run before training starts, named by path, unless the user asks to skip them.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from convformer.progress import progress_bar

from convformer.errors import ConvformerError


def _check(path: str) -> str | None:
    try:
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as err:  # PIL raises many types for bad files
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"


def scan_images(paths: list[str], progress: bool = True, workers: int = 8) -> dict[str, str]:
    """Map each unreadable path to the reason; empty when all files are images."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(progress_bar(pool.map(_check, paths, chunksize=64), total=len(paths), desc="scanning images",
                            leave=False, disable=not progress or len(paths) < 2000))
    return {p: r for p, r in zip(paths, results) if r is not None}


def check_image_folder(dataset, skip_bad: bool, progress: bool = True) -> list[str]:
    """Scan an ImageFolder; drop bad files with a warning when ``skip_bad``, else raise naming them."""
    bad = scan_images([p for p, _ in dataset.samples], progress)
    if not bad:
        return []
    first, reason = next(iter(bad.items()))
    if not skip_bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ConvformerError(f"unreadable image {first} ({reason}){more} in {dataset.root}; remove or "
                              "replace it, or pass --skip-bad-images to train without it")
    dataset.samples = [(p, c) for p, c in dataset.samples if p not in bad]
    dataset.imgs = dataset.samples
    dataset.targets = [c for _, c in dataset.samples]
    warnings.warn(f"skipping {len(bad)} unreadable image(s) in {dataset.root}, e.g. {first} ({reason})",
                  stacklevel=2)
    return sorted(bad)
