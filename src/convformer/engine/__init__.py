"""The one training loop every system uses: configuration, the Task protocol, data order, DDP, EMA,
checkpoints with exact resume, and run folders. It knows no system: a configuration's ``task()`` says
what is trained (see :mod:`convformer.engine.tasks`)."""
from convformer.engine.config import EngineOptions, build_config
from convformer.engine.tasks import Task, TaskData
from convformer.engine.train import train

__all__ = ["EngineOptions", "Task", "TaskData", "build_config", "train"]


def __getattr__(name):  # TrainConfig, EvalConfig and evaluate moved to convformer.vision
    from convformer._aliases import moved_name
    return moved_name(__name__, name)


def _keep_moved_names():
    import sys
    from convformer._aliases import keep_moved_names
    keep_moved_names(sys.modules[__name__])


_keep_moved_names()
