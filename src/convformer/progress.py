"""Progress bars that behave in logs as well as in terminals.

tqdm redraws its bar in place, which in a terminal is one line; written to a file or a CI log every
redraw becomes a new line. :func:`progress_bar` is tqdm with one difference: when standard error is not
a terminal the bar is switched off, so a log gets only the summary lines the caller prints (one per
epoch in training). ``CONVFORMER_PROGRESS=1`` forces bars on, ``=0`` forces them off.
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def interactive() -> bool:
    """True when progress bars should be drawn: stderr is a terminal, unless the environment says otherwise."""
    forced = os.environ.get("CONVFORMER_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled outside a terminal (see module docstring)."""
    return tqdm(iterable, disable=disable or not interactive(), **kwargs)


#: Print a line without breaking a bar that is being drawn (plain print when no bar is active).
write = tqdm.write
