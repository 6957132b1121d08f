"""Resolving ``pretrained=`` to a local weight file.

``True`` means the card's first weight source, a tag such as ``"sail_in22k_ft_in1k"`` picks another,
``"hf-hub:owner/repo/file"`` names any file on the Hugging Face hub, and anything else is a local path.
Downloads go through huggingface_hub's cache; without network access the error says how to pass a
local file instead, which always works.
"""
from __future__ import annotations

import os
from pathlib import Path

from convformer.errors import ConvformerError


def resolve_pretrained(card, pretrained) -> tuple[str, int | None]:
    """Return (local file path, number of classes the file was trained for, if known)."""
    if isinstance(pretrained, (str, os.PathLike)) and not str(pretrained).startswith("hf-hub:"):
        source = next((w for w in card.weights if w.tag == str(pretrained)), None)
        if source is None:
            return str(Path(pretrained).expanduser()), None
    elif pretrained is True:
        if not card.weights:
            raise ConvformerError(f"{card.name} has no published weights; pass a local file with "
                                  "pretrained='path/to/weights.safetensors'")
        source = card.weights[0]
    else:
        spec = str(pretrained)[len("hf-hub:"):]
        parts = spec.split("/")
        if len(parts) < 3:
            raise ConvformerError(f"hf-hub ids look like 'hf-hub:owner/repo/file', got {pretrained!r}")
        return _download("/".join(parts[:2]), "/".join(parts[2:]), card.name), None
    return _download(source.repo_id, source.filename, card.name), source.num_classes


def official_onnx(card) -> str:
    """Local path of the authors' ONNX export of ``card``'s network (found like its weights)."""
    source = next((w for w in card.weights if w.onnx), None)
    if source is None:
        raise ConvformerError(f"{card.name} has no official ONNX export; use onnx:{card.name} to export ours")
    return _download(source.repo_id, source.onnx, card.name)


def local_weight_dirs() -> list[Path]:
    """Folders searched for weights that are not on the hub: $CONVFORMER_WEIGHTS, ~/.cache/convformer,
    and the project's shared weights folder next to a source checkout (``../shared/weights``)."""
    dirs = [Path(os.environ["CONVFORMER_WEIGHTS"])] if os.environ.get("CONVFORMER_WEIGHTS") else []
    dirs.append(Path.home() / ".cache" / "convformer")
    dirs.append(Path(__file__).resolve().parents[4] / "shared" / "weights")
    return dirs


def _download(repo_id: str, filename: str, model_name: str) -> str:
    if repo_id.startswith("github:"):  # released on GitHub, not the hub: look in the local folders
        family = model_name.split("_")[0]
        for folder in local_weight_dirs():
            for candidate in (folder / filename, folder / family / filename):
                if candidate.is_file():
                    return str(candidate)
        url = f"https://github.com/{repo_id[len('github:'):]}"
        raise ConvformerError(f"{filename} for {model_name} is not in {', '.join(map(str, local_weight_dirs()))}; "
                              f"download it from {url} and pass pretrained='path/to/{filename}' (or put it in "
                              "$CONVFORMER_WEIGHTS)")
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id, filename)
    except Exception as err:  # offline, missing repo, auth: one message for all
        raise ConvformerError(
            f"could not fetch weights hf-hub:{repo_id}/{filename} for {model_name} "
            f"({type(err).__name__}); without hub access, download the file elsewhere and pass it as "
            f"pretrained='path/to/file' (safetensors or .pth; timm and official layouts load)") from err
