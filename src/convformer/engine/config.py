"""Run configuration as dataclasses; defaults < config file (YAML/JSON) < command-line flags."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import ConvformerError


@dataclass
class EngineOptions:
    """Options of the training engine itself, the same whatever is trained (every *TrainConfig has them)."""
    grad_clip: Optional[float] = None
    precision: str = "fp32"              # "fp32", "bf16" (autocast) or "fp16" (autocast + loss scaling)
    optimizer: str = "adamw"             # "adamw" or "lamb"
    lr_base_batch: Optional[int] = None  # lr is for this global batch; scaled linearly to the real one
    accum_steps: int = 1                 # micro-batches per optimizer step (gradient accumulation)
    ema_decay: Optional[float] = None    # EMA of weights (e.g. 0.9998), evaluated beside the raw weights
    checkpoint_every: int = 0            # also checkpoint every N optimizer steps (0: at epoch ends only)
    resume: Optional[str] = None         # run folder (or its checkpoint.safetensors) to continue
    skip_nonfinite: bool = False         # skip steps whose loss is NaN/Inf instead of stopping
    deterministic: bool = False          # deterministic algorithms (bitwise-reproducible on CPU)
    tensorboard: bool = False            # also write TensorBoard event files to the run folder
    pretrained: Optional[str] = None     # weight file or tag to fine-tune from (new head if classes differ)
    seed: int = 0
    workers: int = 0
    threads: Optional[int] = None        # torch CPU threads; None = PyTorch's default
    device: str = "auto"
    output: str = "runs"
    name: Optional[str] = None           # run folder name; default <model>-<time>


@dataclass
class TrainConfig(EngineOptions):
    model: str = "convformer_nano"
    data: str = "digits"                 # "digits" or a folder with train/ and val/ class folders
    img_size: Optional[int] = None       # None: 32 for digits, the model card's size otherwise
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 3.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.05
    channels_last: bool = False          # feed images in channels-last memory format
    grad_checkpointing: bool = False     # recompute block activations in backward to save memory
    mixup: float = 0.0                   # Mixup alpha (0 = off)
    cutmix: float = 0.0                  # CutMix alpha (0 = off)
    randaugment: Optional[str] = None    # timm RandAugment policy, e.g. "rand-m9-mstd0.5-inc1" (image folders)
    random_erasing: float = 0.0          # random-erasing probability
    head_dropout: float = 0.0            # dropout before the classifier
    num_classes: Optional[int] = None    # must match the data's classes; set it to say "new head" explicitly
    skip_bad_images: bool = False        # drop unreadable images (with a warning) instead of stopping
    preset: Optional[str] = None         # a recipe from convformer.engine.presets (see --help)
    model_kwargs: Optional[dict] = None  # more model options, e.g. {"mixers": ["sepconv", ...], "dims": [...]}


@dataclass
class EvalConfig:
    weights: str = ""
    model: Optional[str] = None          # read from the weight file's metadata when omitted
    data: str = "digits"
    img_size: Optional[int] = None
    batch_size: int = 128
    workers: int = 0
    device: str = "auto"


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConvformerError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:
        raise ConvformerError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConvformerError(f"config file {path} must hold a mapping of option: value")
    return data


def build_config(cls, config_file: str | None = None, **flags):
    """Defaults, then a preset's values (training), then the config file's, then every flag given."""
    values = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if values.get("preset"):
        from .presets import preset_values
        values = {**preset_values(values["preset"], values.get("model")), **values}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConvformerError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(known)}")
    return cls(**values)


def config_dict(cfg) -> dict:
    return asdict(cfg)


@dataclass
class SRTrainConfig:
    model: str = "cfsr_x2"
    data: str = "photos"                 # "photos" (scikit-image's bundled photos) or a folder of HR images
    val: Optional[str] = None            # folder of HR validation images [photos: the held-out photos]
    data_lr: Optional[str] = None        # folder of given LR images paired with --data (else bicubic)
    val_lr: Optional[str] = None         # folder of given LR images paired with --val (else bicubic)
    train_photos: str = "astronaut,coffee,rocket"   # with data=photos: the photos to train on (others: val)
    steps: int = 2000
    batch_size: int = 16
    patch: int = 48                      # LR patch size (HR patches are patch * scale)
    lr: float = 2e-4
    ema_decay: Optional[float] = 0.999
    eval_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    threads: Optional[int] = None
    output: str = "runs"
    name: Optional[str] = None
    resume: Optional[str] = None


@dataclass
class PoseTrainConfig(EngineOptions):
    """`convformer pose train`: the shared training options plus the pose data's."""
    model: str = "convformer_pose_t27"
    data: str = "synthetic"              # "synthetic" (generated on the fly) or a folder of VideoPose3D files
    keypoints: str = "gt"                # 2-D file data_2d_h36m_<keypoints>.npz in the folder (e.g. cpn_ft_h36m_dbb)
    train_subjects: str = "S1,S5,S6,S7,S8"
    test_subjects: str = "S9,S11"
    train_cameras: Optional[str] = None  # camera indices (0-3) to train on, e.g. "0,1,2" [all]
    test_cameras: Optional[str] = None   # camera indices to validate on [all]
    actions: Optional[str] = None        # comma-separated action names to keep [all]
    stride: int = 1                      # training windows every N frames
    val_stride: int = 1                  # validation windows every N frames
    flip: bool = True                    # flip augmentation (x -> -x, left/right joints swapped)
    test_flip: bool = True               # test-time flip augmentation in validation
    seq2seq: bool = False                # supervise every frame of the window (model predicts all T)
    attention: Optional[str] = None      # "conv" or "linear": override the lifter's attention (ablations)
    synthetic_frames: int = 600          # frames per synthetic sequence (data=synthetic)
    synthetic_noise: float = 0.0         # 2-D Gaussian noise in pixels (data=synthetic)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    lr_schedule: str = "cosine"          # "cosine" (to min_lr) or "exponential" (x lr_decay per epoch)
    lr_decay: float = 0.95               # per-epoch factor of the exponential schedule (the paper's)
    drop_path_rate: float = 0.1

    def task(self):
        from .pose import PoseLifting
        return PoseLifting()


@dataclass
class AsrTrainConfig(EngineOptions):
    """`convformer asr train`: the engine's options plus the speech data's."""
    model: str = "conformer_ctc_xs"
    data: str = "bundled"                # "bundled" (the espeak-ng corpus in data/speech) or a folder of manifests
    train_manifest: str = "train.jsonl"  # NeMo-style manifests (audio_filepath, text) inside the data folder
    val_manifest: str = "test.jsonl"
    vocab: str = "chars"                 # "chars" or a SentencePiece .model file
    spec_augment: bool = True            # SpecAugment on training features
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-3
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    lr_schedule: str = "cosine"
    lr_decay: float = 0.95

    def task(self):
        from .asr import SpeechRecognition
        return SpeechRecognition()
