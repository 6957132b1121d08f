"""``python -m convformer ...`` (and ``torchrun ... -m convformer train ...``): the command line."""
from .cli import _entry

_entry()
