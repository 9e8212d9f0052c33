"""The C++ kernels of ``specdec/native``: XLA FFI custom calls for the CPU, built on first use.

Every ``*.cc`` there is compiled into one library for this machine (``g++ -O3 -march=native``, a
few seconds), kept in ``<specdec cache>/native`` under a key of the sources, the jax version and
the processor, and its handlers registered with XLA:

- ``specdec_panel_matmul``: products with weights in panels (``models.panels``);
- ``specdec_attention``: attention over the KV cache (``attention`` below).

``models.panels`` decides which models use them (``SPECDEC_PANELS``): a model whose weights are in
panels also attends with the kernel.

A changed copy of one kernel's source can be built beside them (``build_variant``) and called in
its place by programs traced under ``substituted``: ``experiments/bench_native.py`` times variants
against the built-in kernels in one process.
"""

from __future__ import annotations

import contextlib
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

from specdec.files import write_atomic

SOURCES = Path(__file__).parent.parent / "native"
HANDLERS = ("specdec_panel_matmul", "specdec_attention")  # symbol = target name
MAX_HEAD_DIM = 256


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled on this machine."""


@functools.cache
def library() -> ctypes.CDLL:
    """The kernels' library, built for this machine (once; cached by sources, jax version and
    processor), its handlers registered with XLA. KernelBuildError when no compiler builds it."""
    path = _library_path("specdec-kernels", _texts())
    if not path.is_file():
        _build(path, [s for s in _sources() if s.suffix == ".cc"])
    return _register(path, {name: name for name in HANDLERS})


def _library_path(stem: str, sources: dict) -> Path:
    """Where the library built from ``sources`` ({file name: text}) is cached: keyed by them, the
    jax version and the processor."""
    from specdec.kernels import machine
    from specdec.weights.zoo import cache_dir

    return cache_dir() / "native" / f"{stem}-{_digest(sources, f'{jax.__version__} {machine()}')}.so"


def _digest(sources: dict, salt: str = "") -> str:
    """16 hex digits of sha256 over ``salt`` and ``sources`` ({file name: text})."""
    digest = hashlib.sha256(salt.encode())
    for name, text in sorted(sources.items()):
        digest.update(name.encode() + text.encode())
    return digest.hexdigest()[:16]


@functools.cache
def sources_key() -> str:
    """The built-in kernels' sources as a short key: a model in panels runs them, so its measured
    costs are keyed by it too (``kernels.software``)."""
    return _digest(_texts())


def _register(path: Path, targets: dict) -> ctypes.CDLL:
    """Load the library at ``path`` and register its symbols as FFI targets ({symbol: target})."""
    loaded = ctypes.cdll.LoadLibrary(str(path))
    for symbol, name in targets.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(loaded, symbol)), platform="cpu")
    return loaded


_substitutes: dict[str, str] = {}  # handler -> the variant's target, under ``substituted``


def target(name: str) -> str:
    """The FFI target of handler ``name`` (one of ``HANDLERS``), after ``library`` has registered
    it: the handler itself, or under ``substituted`` the variant standing in for it."""
    library()
    return _substitutes.get(name, name)


def build_variant(source, label: str) -> tuple[str, str]:
    """(handler, target): ``source``, a changed copy of the kernel source that defines ``handler``
    (say ``attention.cc`` with another loop), built with the kernels' headers into a library of
    its own and its handler registered as ``target`` = ``<handler>_<label>``; ValueError naming
    the file when it does not define exactly one of ``HANDLERS``, or ``label`` is not an identifier."""
    source = Path(source)
    text = source.read_text()
    define = "XLA_FFI_DEFINE_HANDLER_SYMBOL({},".format
    handlers = [h for h in HANDLERS if define(h) in text]
    if len(handlers) != 1:
        names = ", ".join(HANDLERS)
        raise ValueError(f"{source}: a variant defines one of the handlers {names} (found {len(handlers)})")
    if not label.isidentifier():
        raise ValueError(f"{source}: a variant needs a label that is an identifier (got {label!r})")
    handler, name = handlers[0], f"{handlers[0]}_{label}"
    renamed = text.replace(define(handler), define(name))
    headers = _texts(".h")
    path = _library_path(name, {source.name: renamed, **headers})
    if not path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / source.name
            copy.write_text(renamed)
            _build(path, [copy])
    _register(path, {name: name})
    return handler, name


@contextlib.contextmanager
def substituted(targets: dict):
    """Programs traced inside call the variants ``targets`` ({handler: target}, from
    ``build_variant``) in place of those handlers. JAX's trace caches are cleared on entry and
    exit, so no program traced outside is reused inside, or the other way round."""
    unknown = set(targets) - set(HANDLERS)
    if unknown:
        raise ValueError(f"substituted: {sorted(unknown)} are not handlers ({', '.join(HANDLERS)})")
    saved = dict(_substitutes)
    jax.clear_caches()
    _substitutes.update(targets)
    try:
        yield
    finally:
        _substitutes.clear()
        _substitutes.update(saved)
        jax.clear_caches()


def _sources() -> list[Path]:
    return sorted([*SOURCES.glob("*.cc"), *SOURCES.glob("*.h")])


def _texts(*suffixes: str) -> dict[str, str]:
    """{file name: text} of the kernel sources (those with one of ``suffixes``, default all)."""
    return {s.name: s.read_text() for s in _sources() if not suffixes or s.suffix in suffixes}


def _build(path: Path, sources: list[Path]) -> None:
    """Compile ``sources`` (with the headers of ``SOURCES``) into ``path`` (written atomically)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    names = ", ".join(s.name for s in sources)
    if compiler is None:
        raise KernelBuildError(f"no C++ compiler (g++, c++ or $CXX) to build {names}")
    command = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
    command += [f"-I{jax.ffi.include_dir()}", f"-I{SOURCES}", *(str(s) for s in sources)]

    def compile_into(out: Path) -> None:
        done = subprocess.run([*command, "-o", str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise KernelBuildError(f"{compiler} failed to build {names}: {last}")

    write_atomic(path, compile_into)


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
