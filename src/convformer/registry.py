"""Model registry: every model is creatable by name and carries a model card.

A card is the torchvision "weights metadata" idea applied to the architecture: parameter count, MACs at
the default input size, what the paper reports, where the paper and reference code live, which weight
files exist and in which key layout, and how inputs must be preprocessed. Docs, the CLI and the tests
all read cards, so a number lives in one place.
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from convformer.errors import ConvformerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightSource:
    """One place a weight file can come from."""
    tag: str                # e.g. "sail_in1k"
    repo_id: str            # Hugging Face repo, e.g. "timm/convformer_s18.sail_in1k"
    filename: str           # file inside the repo
    layout: str             # key layout: "convformer", "timm" or "official"
    num_classes: int = 1000
    input_size: int = 224
    top1: Optional[float] = None
    onnx: Optional[str] = None  # the authors' ONNX export of the same network, beside ``filename``


@dataclass(frozen=True)
class ModelCard:
    name: str
    family: str
    params: int                        # trainable parameters at num_classes=1000
    macs: int                          # multiply-accumulates for one image at input_size
    input_size: tuple = (3, 224, 224)
    frozen_params: int = 0             # saved but never trained (RandFormer's mixing matrices)
    paper_params_m: Optional[float] = None
    paper_macs_g: Optional[float] = None
    metrics: dict = field(default_factory=dict)     # paper's ImageNet top-1 figures by setting
    paper: str = ""
    code: tuple = ()
    weights: tuple = ()                # WeightSource entries
    preprocessing: dict = field(default_factory=lambda: dict(
        interpolation="bicubic", crop_pct=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    notes: tuple = ()
    task: str = "classification"       # or "super-resolution", "pose", "speech"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A human-readable card, as printed by ``convformer models --show``."""
        lines = [f"{self.name}  ({self.family})",
                 f"  params      {self.params:,}" + (f" (+{self.frozen_params:,} frozen)" if self.frozen_params else "")
                 + (f"   paper: {self.paper_params_m}M" if self.paper_params_m else ""),
                 f"  MACs        {self.macs / 1e9:.3f} G at " + (
                     f"{self.input_size[0]} frames x {self.input_size[1]} joints" if self.task == "pose"
                     else "1 s of audio" if self.task == "speech"
                     else f"{self.input_size[1]}x{self.input_size[2]}")
                 + (f"   paper: {self.paper_macs_g}G" if self.paper_macs_g else "")]
        label = {"classification": "top-1", "super-resolution": "PSNR/SSIM"}.get(self.task, "metric")
        for key, value in self.metrics.items():
            lines.append(f"  {label} {key:<16} {value}")
        pre = self.preprocessing
        if self.task == "classification":
            lines.append(f"  preprocess  {pre['interpolation']} resize, crop_pct {pre['crop_pct']}, "
                         f"mean {tuple(pre['mean'])}, std {tuple(pre['std'])}")
        elif self.task == "pose":
            lines.append(f"  input       {self.input_size[0]} frames of 2-D keypoints, {pre['keypoints']}; "
                         f"{pre['normalisation']}; output {pre['output']}")
        elif self.task == "speech":
            lines.append(f"  input       {pre['sample_rate']} Hz audio -> {pre['n_mels']} {pre['features']}; "
                         "output CTC log-probabilities (blank last)")
        else:
            lines.append(f"  input       RGB in [0, 1], any size; output {pre.get('scale')}x larger")
        if self.paper:
            lines.append(f"  paper       {self.paper}")
        for url in self.code:
            lines.append(f"  code        {url}")
        for w in self.weights:
            where = w.repo_id if w.repo_id.startswith("github:") else f"hf-hub:{w.repo_id}"
            lines.append(f"  weights     {w.tag}: {where}/{w.filename} ({w.layout} layout"
                         + (f", {w.num_classes} classes, {w.input_size}px)" if w.num_classes else ")"))
        for note in self.notes:
            lines.append(f"  note        {note}")
        return "\n".join(lines)


_MODELS: dict[str, tuple[Callable[..., nn.Module], ModelCard]] = {}


def register_model(card: ModelCard, builder: Callable[..., nn.Module]) -> None:
    if card.name in _MODELS:
        raise ValueError(f"model {card.name!r} registered twice")
    _MODELS[card.name] = (builder, card)


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style pattern (and a task, if given), sorted."""
    _ensure_loaded()
    return sorted(n for n, (_, card) in _MODELS.items() if fnmatch.fnmatch(n, pattern)
                  and (task is None or card.task == task))


def model_card(name: str) -> ModelCard:
    return _lookup(name)[1]


def _lookup(name: str):
    _ensure_loaded()
    if name not in _MODELS:
        close = [n for n in _MODELS if n.split("_")[0] == name.split("_")[0]] or sorted(_MODELS)[:8]
        raise ConvformerError(f"unknown model {name!r}; did you mean one of: {', '.join(sorted(close))}?"
                              " (`convformer models` lists all)")
    return _MODELS[name]


def create_model(name: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """Build a registered model by name.

    ``pretrained=True`` fetches the card's first weight source through huggingface_hub; a string is a
    local weight file (safetensors, or a .pth/.pt state dict read with ``weights_only=True``) in our,
    timm's or the official repository's layout. Other keyword arguments go to the model (for example
    ``num_classes``, ``features_only``, ``out_indices``, ``drop_path_rate``, ``img_size``).
    """
    builder, card = _lookup(name)
    model = builder(**kwargs)
    model.model_card = card
    if pretrained:
        from convformer.weights import load_pretrained
        load_pretrained(model, card, pretrained)
    return model


# The system packages; importing one registers its models and fast paths. They are named, not imported,
# so the core depends on no system: the first lookup imports them (a new system adds its package here).
SYSTEMS = ("convformer.vision", "convformer.sr", "convformer.pose", "convformer.asr")


def _ensure_loaded() -> None:
    for module in SYSTEMS:
        importlib.import_module(module)  # registers on first import; cached afterwards
