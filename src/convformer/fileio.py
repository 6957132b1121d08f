"""Writing files so that a crash or a full disk never leaves half a file behind.

Every file the library writes (weights, checkpoints, metrics, plots, ONNX graphs, reports) goes
through :func:`atomic_write`: the content is written to a temporary file in the target folder, flushed
to disk, and only then renamed over the target. A rename within one folder is atomic, so readers see
either the old file or the complete new one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from convformer.errors import ConvformerError

# mkstemp creates files readable by the owner only; new files should get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename tmp_path to ``path``; on failure ``path`` is untouched."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise ConvformerError(f"could not write {path}: {err.strerror or err}; nothing was overwritten "
                              "(check free disk space and permissions)") from err
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
