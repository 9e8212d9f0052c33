"""Files written whole or not at all: a write goes to a temporary file beside the target, which
is renamed onto it only once complete, so an interrupted or failed write leaves the previous
file (or none) in place, never a truncated one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file in ``path``'s folder (created if missing),
    then rename it onto ``path``; on any error the temporary file is removed and ``path`` is left
    as it was. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; written files are meant to be shareable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``path`` holding ``text`` (UTF-8), written by ``write_atomic``."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
