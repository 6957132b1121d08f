"""``python -m convformer ...`` (and ``torchrun ... -m convformer train ...``): the command line."""
from convformer.cli import _entry

_entry()
