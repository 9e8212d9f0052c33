"""The C++ kernels of ``specdec/native``: XLA FFI custom calls for the CPU, built on first use.

Every ``*.cc`` there is compiled into one library for this machine (``g++ -O3 -march=native``, a
few seconds), kept in ``<specdec cache>/native`` under a key of the sources, the jax version and
the processor, and its handlers registered with XLA:

- ``specdec_panel_matmul``: products with weights in panels (``models.panels``);
- ``specdec_attention``: attention over the KV cache (``attention`` below).

``models.panels`` decides which models use them (``SPECDEC_PANELS``): a model whose weights are in
panels also attends with the kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

SOURCES = Path(__file__).parent.parent / "native"
HANDLERS = ("specdec_panel_matmul", "specdec_attention")  # symbol = target name
MAX_HEAD_DIM = 256


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled on this machine."""


@functools.cache
def library() -> ctypes.CDLL:
    """The kernels' library, built for this machine (once; cached by sources, jax version and
    processor), its handlers registered with XLA. KernelBuildError when no compiler builds it."""
    from specdec.kernels import machine
    from specdec.weights.zoo import cache_dir

    digest = hashlib.sha256(f"{jax.__version__} {machine()}".encode())
    for source in _sources():
        digest.update(source.name.encode() + source.read_bytes())
    path = cache_dir() / "native" / f"specdec-kernels-{digest.hexdigest()[:16]}.so"
    if not path.is_file():
        _build(path)
    loaded = ctypes.cdll.LoadLibrary(str(path))
    for name in HANDLERS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(loaded, name)), platform="cpu")
    return loaded


def target(name: str) -> str:
    """The FFI target ``name`` (one of ``HANDLERS``), after ``library`` has registered it."""
    library()
    return name


def _sources() -> list[Path]:
    return sorted([*SOURCES.glob("*.cc"), *SOURCES.glob("*.h")])


def _build(path: Path) -> None:
    """Compile the ``*.cc`` sources into ``path`` (written atomically)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    names = ", ".join(s.name for s in _sources() if s.suffix == ".cc")
    if compiler is None:
        raise KernelBuildError(f"no C++ compiler (g++, c++ or $CXX) to build {names}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        command = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
        command += [f"-I{jax.ffi.include_dir()}", *(str(s) for s in _sources() if s.suffix == ".cc")]
        done = subprocess.run([*command, "-o", str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise KernelBuildError(f"{compiler} failed to build {names}: {last}")
        os.replace(out, path)


def attends(head_dim: int) -> bool:
    """Whether ``attention`` takes heads of ``head_dim``: a multiple of 8 up to ``MAX_HEAD_DIM``."""
    return head_dim % 8 == 0 and head_dim <= MAX_HEAD_DIM


def attention(q, blocks, visible):
    """Grouped-query attention over a cache by ``specdec/native/attention.cc``, float32.

    q [B Hkv, T G, Dh] (row b's kv head h is entry b Hkv + h; query j of position t is t G + j;
    scaled by 1 / sqrt(Dh)); blocks: (keys [B Hkv, Dh, S_i], values [B Hkv, S_i, Dh]) pairs whose
    slots follow one another (the cache, then new entries not written to it); visible
    [B, T, sum S_i] bool -> [B Hkv, T G, Dh]: each query's softmax over the slots it sees,
    weighting their values (a query that sees none: zeros). Slots after the last one a row sees
    in a block are not read. Not differentiable (``transformer.cache_attention`` is).
    """
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    call = jax.ffi.ffi_call(target("specdec_attention"), out, vmap_method="sequential")
    return call(q.astype(jnp.float32), visible, *(a for block in blocks for a in block))
