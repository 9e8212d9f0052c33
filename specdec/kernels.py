"""Which XLA kernels a program's products run: compiler options per program, chosen per machine.

On XLA:CPU (jax 0.10) a product of one position against a weight is XLA's own matrix-vector
kernel, and a product of T >= 2 positions goes to YNNPACK. Whether YNNPACK or XLA's Eigen kernels
read the weights faster at T >= 2 depends on the processor (docs/benchmarks.md, "Kernels per
program"): on the 2-core AVX2 VM a verify pass over 5 positions cost 2.8 decode steps with
YNNPACK and 1.7 with Eigen; on a 2-core AVX-512 VM it cost 1.3 with YNNPACK and 1.6 with Eigen.
A decode step is 13-23% slower without YNNPACK's fusions on both, so autoregressive loops and
prefills always keep XLA's defaults; the programs that verify T >= 2 positions (the speculative
decode loops, and the timing programs that stand for them) are compiled with ``verify_options``.

``SPECDEC_VERIFY_KERNELS`` picks their build:

- ``auto`` (the default): the faster of the two for the model's pass over ``PROBE_T`` positions,
  timed once per machine, jax version, forward revision and model (a few seconds) and kept in
  ``<specdec cache>/kernels.json``;
- ``eigen``: YNNPACK's fusions off (XLA's Eigen kernels for the products);
- ``default``: XLA's defaults, as every other program.

An ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is the user's choice and is left alone.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import jax

from specdec.jsonfile import JsonFile
from specdec.models import native, transformer

ENV = "SPECDEC_VERIFY_KERNELS"
BUILDS = ("eigen", "default")
CHOICES = ("auto", *BUILDS)
YNN = "xla_cpu_experimental_ynn_fusion_type"
OPTIONS = {"eigen": {YNN: ""}, "default": {}}  # compiler options of each build
PROBE_T = 5  # the positions of the pass timed for ``auto``: a verify pass at gamma 4
CACHE_FILE = "kernels.json"


def machine() -> str:
    """This machine as a cache key: the JAX device kind and count, the processor's architecture,
    model and widest vector extension, and the CPU count."""
    device = jax.devices()[0]
    return f"{device.device_kind} x{jax.device_count()}, {_processor()} {os.cpu_count()} cpus"


def _processor() -> str:
    """The processor, as in "x86_64 AMD EPYC (family 25 model 17, avx512)", from /proc/cpuinfo
    where it exists (else the architecture alone)."""
    arch = platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return arch
    field = lambda name: (re.findall(rf"^{name}\s*:\s*(.*)$", info, re.M) or [""])[0].strip()
    flags = set(field("flags").split())
    vector = next((v for v in ("avx512f", "avx2", "avx") if v in flags), None)
    ident = [f"family {field('cpu family')} model {field('model')}"] if field("cpu family") else []
    details = ", ".join(ident + ([vector.removesuffix("f")] if vector else []))
    return f"{arch} {field('model name')}".strip() + (f" ({details})" if details else "")


def verify_choice() -> str:
    """``SPECDEC_VERIFY_KERNELS``: one of ``CHOICES`` (default "auto"); ValueError naming it otherwise."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {choice!r}")
    return choice


def verify_build(model) -> str:
    """The build (one of ``BUILDS``) of a program whose passes of ``model`` (a ``specdec.Model``)
    score T >= 2 positions: on the CPU backend, the one ``SPECDEC_VERIFY_KERNELS`` picks (``auto``:
    the one measured faster for this model); elsewhere, or when ``XLA_FLAGS`` already sets
    YNNPACK's fusions, "default"."""
    choice = verify_choice()
    if jax.default_backend() != "cpu" or YNN in os.environ.get("XLA_FLAGS", ""):
        return "default"
    return measured_build(model)["build"] if choice == "auto" else choice


def verify_options(model) -> dict[str, str]:
    """The XLA compiler options of ``verify_build(model)``."""
    return OPTIONS[verify_build(model)]


def cache_path() -> Path:
    """The file of measured builds: ``<specdec cache>/kernels.json``."""
    from specdec.weights.zoo import cache_dir

    return cache_dir() / CACHE_FILE


def software() -> str:
    """The code a timing measures, as a cache key: jax's version, the forward's revision
    (``models.transformer.REVISION``) and the native kernels' sources (``native.sources_key``), so
    a timing is never read for code it did not run."""
    return f"jax {jax.__version__} | forward r{transformer.REVISION} | kernels {native.sources_key()}"


def model_key(model) -> str:
    """The file's key for ``model`` on this machine: the machine, the software and the model's
    name, dtype and shape."""
    c, dtype = model.config, storage(model)
    shape = f"V={c.vocab_size} D={c.dim} L={c.n_layers} H={c.n_heads}/{c.n_kv_heads} F={c.ffn_dim}"
    return f"{machine()} | {software()} | {model.name} {dtype} {shape}"


def storage(model) -> str:
    """How ``model`` stores its weights, as a cache key: "float32", "float32/int8", "float32/panels" ..."""
    parts = [str(model.dtype), model.quant, "panels" if model.panels else None]
    return "/".join(p for p in parts if p)


def measured_build(model) -> dict:
    """{"build": the faster build, "<build>_s": seconds of each} for ``model``'s verify pass over
    ``PROBE_T`` positions (``timing.builds_s``): from ``cache_path()`` where it holds them, else
    timed now (under the file's lock, so concurrent processes time it once and never time each
    other) and stored."""
    from specdec import timing

    def measure(entry):
        if entry is not None:  # another process timed it while this one waited for the lock
            return entry
        seconds = timing.builds_s(model, PROBE_T)
        return {"build": min(seconds, key=seconds.get)} | {f"{b}_s": s for b, s in seconds.items()}

    valid = lambda entry: isinstance(entry, dict) and entry.get("build") in BUILDS
    form = f'a {{key: {{"build": one of {", ".join(BUILDS)}, ...}}}} object'
    choices, entry_key = JsonFile(cache_path(), valid, "kernel choices", form), model_key(model)
    return choices.read().get(entry_key) or choices.update(entry_key, measure)
