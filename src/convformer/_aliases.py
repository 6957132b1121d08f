"""Old module paths that keep working after the move to one package per system (issue 21).

Until 0.2 the library was sorted by kind (``models/``, ``data/``, ``engine/``, ``cli/``). Each old module
path below is an alias of the module that now holds its code: importing it gives that very module (so
``isinstance`` checks and monkeypatching agree) and emits one ``DeprecationWarning`` naming the new path.
The table holds names, not imports, so the core still imports no system until an old path is used.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> the module that holds its code now
MOVED_MODULES = {
    "convformer.models.metaformer": "convformer.vision.metaformer",
    "convformer.models.metaformer_zoo": "convformer.vision.metaformer_zoo",
    "convformer.models.backbone": "convformer.vision.backbone",
    "convformer.models.fold": "convformer.vision.fold",
    "convformer.models.lowformer": "convformer.vision.lowformer",
    "convformer.models.lowformer_fast": "convformer.vision.lowformer_fast",
    "convformer.models.detection": "convformer.vision.detection",
    "convformer.models.cfsr": "convformer.sr.cfsr",
    "convformer.models.cfsr_fast": "convformer.sr.cfsr_fast",
    "convformer.models.pose": "convformer.pose.lifter",
    "convformer.models.conformer": "convformer.asr.conformer",
    "convformer.models.conformer_stream": "convformer.asr.streaming",
    "convformer.weights.lowformer_keys": "convformer.vision.lowformer_keys",
    "convformer.weights.nemo": "convformer.asr.nemo",
    "convformer.data.digits": "convformer.vision.digits",
    "convformer.data.images": "convformer.vision.images",
    "convformer.data.scan": "convformer.vision.scan",
    "convformer.data.sr": "convformer.sr.data",
    "convformer.data.pose": "convformer.pose.data",
    "convformer.data.pose_synth": "convformer.pose.synth",
    "convformer.data.keypoints": "convformer.pose.keypoints",
    "convformer.data.speech": "convformer.asr.data",
    "convformer.engine.evaluate": "convformer.vision.evaluate",
    "convformer.engine.presets": "convformer.vision.presets",
    "convformer.engine.sr": "convformer.sr.task",
    "convformer.engine.sr_metrics": "convformer.sr.metrics",
    "convformer.engine.pose": "convformer.pose.task",
    "convformer.engine.pose_metrics": "convformer.pose.metrics",
    "convformer.engine.pose_plot": "convformer.pose.plot",
    "convformer.engine.ctc": "convformer.asr.ctc",
    "convformer.engine.asr": "convformer.asr.task",
    "convformer.export.stream_onnx": "convformer.asr.stream_onnx",
    "convformer.bench.nemo": "convformer.asr.nemo_reference",
    "convformer.cli.sr": "convformer.sr.cli",
    "convformer.cli.pose": "convformer.pose.cli",
    "convformer.cli.asr": "convformer.asr.cli",
    "convformer.cli.options": "convformer.engine.options",
    "convformer.cli.train": "convformer.vision.cli",
    "convformer.cli.evaluate": "convformer.vision.cli",
    "convformer.cli.predict": "convformer.vision.cli",
}

# old packages that no longer exist -> the module whose names they exported (None: submodules only)
OLD_PACKAGES = {
    "convformer.models": None,
    "convformer.data": "convformer.vision.data",
}

# names that moved out of a package that still exists: (package, name) -> "module:name"
MOVED_NAMES = {
    ("convformer.engine", "TrainConfig"): "convformer.vision.config:TrainConfig",
    ("convformer.engine", "EvalConfig"): "convformer.vision.config:EvalConfig",
    ("convformer.engine", "evaluate"): "convformer.vision.evaluate:evaluate",
    ("convformer.engine.config", "TrainConfig"): "convformer.vision.config:TrainConfig",
    ("convformer.engine.config", "EvalConfig"): "convformer.vision.config:EvalConfig",
    ("convformer.engine.config", "SRTrainConfig"): "convformer.sr.config:SRTrainConfig",
    ("convformer.engine.config", "PoseTrainConfig"): "convformer.pose.config:PoseTrainConfig",
    ("convformer.engine.config", "AsrTrainConfig"): "convformer.asr.config:AsrTrainConfig",
    ("convformer.engine.tasks", "ImageClassification"): "convformer.vision.task:ImageClassification",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path will be removed in convformer 0.3",
                  DeprecationWarning, stacklevel=3)


def moved_name(package: str, name: str):
    """Resolve a name that moved out of ``package`` (for the package's module ``__getattr__``)."""
    target = MOVED_NAMES.get((package, name))
    if target is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module, attr = target.split(":")
    _warn(f"{package}.{name}", f"{module}.{attr}")
    return getattr(importlib.import_module(module), attr)


_REAL_SPECS: dict = {}


class _KeepsMovedNames(types.ModuleType):
    """A package whose moved names win over its old submodules of the same name. ``convformer.engine``
    exported the function ``evaluate`` beside the module ``engine/evaluate.py``; the function was the
    package's attribute. Importing the old module path binds the alias module to that attribute, which
    would hide the function: this class ignores that binding, so the name still resolves to the function
    (through the package's ``__getattr__``), as before the move."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and (self.__name__, name) in MOVED_NAMES:
            return
        super().__setattr__(name, value)


def keep_moved_names(module: types.ModuleType) -> None:
    """Give a package with moved names the behaviour of :class:`_KeepsMovedNames`."""
    module.__class__ = _KeepsMovedNames


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES or fullname in OLD_PACKAGES:
            return importlib.util.spec_from_loader(fullname, self, is_package=fullname in OLD_PACKAGES)
        return None

    def create_module(self, spec):
        new = MOVED_MODULES.get(spec.name)
        if new is None:
            return None  # an old package: a fresh module, filled in by exec_module
        _warn(spec.name, new)
        module = importlib.import_module(new)
        _REAL_SPECS[spec.name] = module.__spec__  # the import system stamps the alias spec on it; put it back
        return module

    def exec_module(self, module):
        if module.__name__ != module.__spec__.name:  # an alias of a moved module
            module.__spec__ = _REAL_SPECS.pop(module.__spec__.name)
            return
        source = OLD_PACKAGES[module.__name__]
        old = module.__name__

        def __getattr__(name):
            if source is None:
                raise AttributeError(f"module {old!r} has no attribute {name!r}")
            _warn(f"{old}.{name}", f"{source}.{name}")
            return getattr(importlib.import_module(source), name)
        module.__getattr__ = __getattr__
        module.__path__ = []


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


__all__ = ["MOVED_MODULES", "OLD_PACKAGES", "MOVED_NAMES", "install", "moved_name"]
