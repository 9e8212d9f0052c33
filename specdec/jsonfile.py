"""A JSON file of measurements, {key: entry}, shared by processes: read whole, changed one entry at
a time under a file lock, rewritten atomically (temporary file, then rename). A file that is not
such an object is named in a ValueError and never overwritten."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from specdec.files import write_text_atomic


class JsonFile:
    """The file at ``path`` (created with its folder on first write); ``valid(entry)`` checks each
    entry, ``what`` (e.g. "cost cache", "a {key: {latencies, c}} object") names the file and its
    form in errors."""

    def __init__(self, path: str | os.PathLike, valid: Callable[[object], bool], what: str, form: str):
        self.path, self.valid, self.what, self.form = Path(path), valid, what, form

    def read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not all(map(self.valid, data.values())):
                raise ValueError(f"not {self.form}")
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.what} {self.path} is corrupt ({err}); delete it to re-measure") from None
        return data

    def update(self, key: str, change: Callable[[dict | None], dict]) -> dict:
        """Apply ``change(entry or None) -> entry`` to one entry under the lock (``change`` may take
        its time: other processes wait for it) and write the file if the entry changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.path}.lock"):
            data = self.read()
            old = data.get(key)
            data[key] = change(copy.deepcopy(old))  # ``change`` may edit its argument in place
            if data[key] != old:
                write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
        return data[key]
