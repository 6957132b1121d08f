"""Training and evaluation engine."""
from .config import EvalConfig, TrainConfig, build_config
from .evaluate import evaluate
from .train import train

__all__ = ["EvalConfig", "TrainConfig", "build_config", "evaluate", "train"]
