"""Model files register their variants with the registry on import."""
from . import metaformer_zoo  # noqa: F401
