"""JAX's persistent compilation cache, on by default, so compiled programs outlive the process.

``import specdec`` calls :func:`enable`: every program XLA compiles in this process (the decode
loop of ``specdec.generate``, the timing programs, a sweep member's programs) is written to a
directory on disk, and a later process that compiles the same program for the same backend
loads it from there instead of compiling it again.

- ``SPECDEC_COMPILE_CACHE``: the directory (default ``<specdec cache>/jax-compile``, next to the
  model zoo's files, see ``specdec.weights.zoo.cache_dir``); ``off`` (or ``0``, ``false``,
  ``none``) leaves JAX's cache alone.
- A directory already configured through JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``) wins; specdec does not override it.
- JAX writes only programs whose compile took at least ``jax_persistent_cache_min_compile_time_secs``
  (default 1 s; environment variable ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``).

JAX decides once per process, at its first compilation, whether the cache is used, so
:func:`enable` must run before anything is compiled: importing specdec does that.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "SPECDEC_COMPILE_CACHE"
OFF = ("off", "0", "false", "none", "no")
SUBDIR = "jax-compile"


def cache_path() -> Path | None:
    """The directory specdec would use, or None when ``SPECDEC_COMPILE_CACHE`` opts out."""
    value = os.environ.get(ENV)
    if value is not None and value.strip().lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    from specdec.weights.zoo import cache_dir

    return cache_dir() / SUBDIR


def enable() -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_path` unless JAX already has a
    directory or the user opted out; returns the directory in effect (None: no cache)."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = cache_path()
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)
