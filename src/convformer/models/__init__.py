"""Model files register their variants with the registry on import."""
from . import metaformer_zoo  # noqa: F401
from . import cfsr  # noqa: F401
from . import pose  # noqa: F401
from . import conformer  # noqa: F401
from . import lowformer  # noqa: F401
