"""Reading checkpoint files so that every format error is one line naming the file.

Parsers (``json``, ``safetensors``, ``tokenizers``, ``gguf``) raise errors that name no file,
and some span several lines; these helpers re-raise them as ``ValueError("<path>: ...")``
(``FileNotFoundError`` for a missing file), chained from nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["one_line", "read_json", "read_safetensors"]


def one_line(err: BaseException | str) -> str:
    """``err``'s message with all whitespace runs (newlines included) collapsed to one space."""
    return " ".join(str(err).split())


def read_json(path: str | os.PathLike, *, kind: type = dict) -> Any:
    """The JSON value in ``path``, which must be a ``kind`` (an object by default).

    FileNotFoundError names a missing file; invalid UTF-8 or JSON, or a value of another
    type, raises ValueError naming the file.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({one_line(err)})") from None
    except OSError as err:
        raise ValueError(f"{path}: unreadable ({one_line(err.strerror or err)})") from None
    if not isinstance(value, kind):
        want = {dict: "a JSON object", list: "a JSON array"}.get(kind, kind.__name__)
        raise ValueError(f"{path}: expected {want}, got {type(value).__name__}")
    return value


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as numpy arrays.

    FileNotFoundError names a missing file; a truncated or corrupt one raises ValueError naming it.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such safetensors file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: unreadable or truncated safetensors file ({one_line(err)})") from None
