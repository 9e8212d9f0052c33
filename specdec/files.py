"""Files written whole or not at all: a write goes to a temporary file beside the target, which
is renamed onto it only once complete, so an interrupted or failed write leaves the previous
file (or none) in place, never a truncated one. ``replace_folder`` does the same for a folder of
files that belong together (a checkpoint's config and weights)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
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


def replace_folder(
    path: str | os.PathLike, write: Callable[[Path], object], keep: Callable[[str], bool]
) -> Path:
    """A new folder at ``path``: ``write(staging)`` fills a temporary folder beside it, after the
    entries of an existing ``path`` whose names ``keep`` allows are carried into it (hard links
    where the file system allows, else copies); then ``path`` is renamed aside, the new folder
    renamed onto it and the old one removed. A failed or killed write leaves ``path`` as it was
    (a kill leaves the staging folder ``.<name>.*.tmp`` beside it); a kill between the two renames
    leaves the old folder whole as ``.<name>.old-*``. Returns ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        if path.is_dir():
            for entry in path.iterdir():
                if keep(entry.name):
                    _carry(entry, staging / entry.name)
        write(staging)
        os.chmod(staging, 0o755)  # mkdtemp creates 0700
        if not path.exists():
            os.replace(staging, path)
            return path
        aside = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
        os.replace(path, aside)
        try:
            os.replace(staging, path)
        except BaseException:
            os.replace(aside, path)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(aside)
    return path


def _carry(source: Path, target: Path) -> None:
    """``source`` (a file or a folder) at ``target``: hard links where possible, else copies."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)
