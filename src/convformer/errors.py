"""The one exception type for problems a user can fix (bad input, missing files, wrong weights).

The CLI prints its message on one line and exits with code 2; anything else is a bug in convformer.
"""


class ConvformerError(Exception):
    """A user-facing problem: the message says what is wrong and what to do about it."""
