"""convformer: convolutional transformers, exactly as the papers define them, fast on your hardware.

Public API::

    import convformer
    model = convformer.create_model("convformer_s18", pretrained="weights.safetensors")
    convformer.list_models("caformer*"); convformer.model_card("caformer_s18")
    convformer.save_weights(model, "out.safetensors"); convformer.load_weights(model, "timm.pth")
    fast = convformer.optimize(model, dtype="bf16", compile=True)   # folded inference copy
"""
from convformer import _aliases
from convformer.errors import ConvformerError
from convformer.optimize import optimize
from convformer.registry import create_model, list_models, model_card
from convformer.timm_bridge import register_with_timm
from convformer.weights import load_weights, save_weights

__version__ = "0.1.0"
_aliases.install()  # old module paths (convformer.models.*, convformer.data.*, ...) keep working
__all__ = ["ConvformerError", "optimize", "create_model", "list_models", "model_card", "load_weights", "save_weights",
           "register_with_timm"]
