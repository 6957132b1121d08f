"""Speech recognition with the cache-aware streaming Conformer: the model, streaming state, log-mel data
and manifests, CTC decoding, the training task, NeMo checkpoints, the streaming ONNX export and the
``convformer asr`` commands.

Importing this package registers the Conformer models with the core.
"""
from convformer.asr import conformer, hybrid  # noqa: F401  (register the models)
